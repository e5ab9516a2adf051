"""scikit-learn estimators on layerwise (the ``sklearn`` extra: ``pip install layerwise[sklearn]``).

- ``BernoulliRBM``: a drop-in for ``sklearn.neural_network.BernoulliRBM``;
- ``DBNClassifier`` and ``DBNTransformer``: a pretrained, fine-tuned deep belief net, and
  a pretrained stack as a feature extractor.

Each saves as a layerwise artifact (``est.save(path)``, ``Class.load(path)``).
"""

from layerwise._checks import MissingExtra

try:
    import sklearn  # noqa: F401
except ImportError as e:  # pragma: no cover - the extra is missing
    raise MissingExtra("layerwise.sklearn needs scikit-learn: pip install 'layerwise[sklearn]'") from e

from layerwise.sklearn.dbn import DBNClassifier, DBNTransformer
from layerwise.sklearn.rbm import EXPECTED_FAILED_CHECKS, BernoulliRBM

__all__ = ["BernoulliRBM", "DBNClassifier", "DBNTransformer", "EXPECTED_FAILED_CHECKS"]
