"""layerwise: deep belief nets and stacked autoencoders with the classic training tricks.

Greedy layer-wise pretraining (RBMs, denoising autoencoders), a saved pretrained net,
supervised fine-tuning by backpropagation::

    import layerwise as lw

    dbn = lw.DeepBeliefNet(784, [500, 250])
    lw.pretrain(dbn, x_train, epochs=5, learning_rate=0.1)
    clf = lw.finetune(dbn.to_classifier(10), (x_train, y_train), epochs=20, learning_rate=0.1)
    lw.evaluate(clf, (x_test, y_test))       # {"loss": ..., "accuracy": ...}
    result = lw.train("recipes/quick-mnist.toml")

Every name is imported on first use: ``import layerwise`` loads neither torch nor
anything else, so the command line can set the process policy (threads, the OpenMP
wait policy) before torch starts.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from layerwise._version import __version__

# name -> the module that defines it
_PUBLIC = {
    "BernoulliRBM": "layerwise.units",
    "GaussianBernoulliRBM": "layerwise.units",
    "DenoisingAutoencoder": "layerwise.units",
    "Unit": "layerwise.units",
    "DeepBeliefNet": "layerwise.stack",
    "pretrain": "layerwise.api",
    "finetune": "layerwise.api",
    "evaluate": "layerwise.api",
    "load": "layerwise.api",
    "train": "layerwise.api",
    "resume": "layerwise.api",
    "Recipe": "layerwise.api",
    "Reporter": "layerwise.reporting.reporter",
    "LayerwiseError": "layerwise._checks",
    "DBNClassifier": "layerwise.sklearn",  # the scikit-learn estimators need the sklearn extra
    "DBNTransformer": "layerwise.sklearn",
}

# subpackages and modules reachable as attributes (``lw.data.load_digits()``)
_MODULES = {
    "advice",
    "api",
    "config",
    "data",
    "export",
    "jobs",
    "lab",
    "reporting",
    "runtime",
    "sklearn",
    "stack",
    "storage",
    "training",
    "units",
    "use",
}

__all__ = [
    "__version__",
    "BernoulliRBM",
    "GaussianBernoulliRBM",
    "DenoisingAutoencoder",
    "Unit",
    "DeepBeliefNet",
    "pretrain",
    "finetune",
    "evaluate",
    "load",
    "train",
    "resume",
    "Recipe",
    "Reporter",
    "LayerwiseError",
    "DBNClassifier",
    "DBNTransformer",
]

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from layerwise._checks import LayerwiseError
    from layerwise.api import Recipe, evaluate, finetune, load, pretrain, resume, train
    from layerwise.reporting.reporter import Reporter
    from layerwise.sklearn import DBNClassifier, DBNTransformer
    from layerwise.stack import DeepBeliefNet
    from layerwise.units import BernoulliRBM, DenoisingAutoencoder, GaussianBernoulliRBM, Unit


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return import_module(f"layerwise.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module 'layerwise' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
