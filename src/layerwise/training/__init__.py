"""Training: the one loop (``loop``), the tricks that hook into it (``guard``,
``averaging``, ``distributed``), the fused fine-tuning step (``fused``), greedy
pretraining (``pretrain``), fine-tuning (``finetune``) and the learning-rate probe
(``probe``)."""
