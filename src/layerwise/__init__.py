"""layerwise: deep belief nets and stacked autoencoders with the classic training tricks.

Greedy layer-wise pretraining (RBMs, denoising autoencoders), a saved pretrained net,
supervised fine-tuning by backpropagation.
"""

__version__ = "0.1.0"
