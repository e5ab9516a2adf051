"""``DBNTransformer`` (a pretrained stack as a feature extractor) and ``DBNClassifier``
(pretrained, then fine-tuned by backpropagation), on layerwise's ``pretrain`` and
``finetune``.

Both take the architecture (``hidden``: the hidden sizes, default the advisor's for the
data's width), the pretraining settings, the device and ``random_state``; the classifier
adds fine-tuning's. Inputs are float32 in [0, 1] for Bernoulli visibles (standardised for
``visible="gaussian"``); labels may be any values scikit-learn accepts (``classes_``).
"""

from __future__ import annotations

import dataclasses
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from layerwise.sklearn._io import SavesAsArtifact

_PRETRAIN = {
    "hidden": [None, list, tuple],
    "unit": [StrOptions({"rbm", "autoencoder"})],
    "visible": [StrOptions({"bernoulli", "gaussian"})],
    "pretrain_epochs": [Interval(Integral, 0, None, closed="left")],
    "pretrain_learning_rate": [Interval(Real, 0, None, closed="neither")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "cd_k": [Interval(Integral, 1, None, closed="left")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "device": [str],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}


class _Stack(SavesAsArtifact, BaseEstimator):
    """What the two estimators share: the pretrained stack and its arrays."""

    def _device(self) -> torch.device:
        from layerwise.runtime import resolve_device

        return resolve_device(self.device)

    def _reporter(self):
        from layerwise.reporting.reporter import Reporter

        return Reporter(echo=print if self.verbose else None)

    def _pretrain(self, X: np.ndarray, seed: int):
        from layerwise.advice.rules import suggest_layers
        from layerwise.config import PretrainConfig
        from layerwise.stack import DeepBeliefNet
        from layerwise.training.pretrain import pretrain

        n = X.shape[1]
        hidden = list(self.hidden) if self.hidden is not None else suggest_layers(max(n, 2))
        dbn = DeepBeliefNet(n, hidden, unit=self.unit, visible=self.visible, seed=seed, device=self._device())
        cfg = dataclasses.replace(
            PretrainConfig(),
            epochs=self.pretrain_epochs,
            batch_size=self.batch_size,
            learning_rate=self.pretrain_learning_rate,
            cd_k=self.cd_k,
            weight_decay=self.weight_decay,
            momentum_switch_epoch=min(5, self.pretrain_epochs),
        )
        if self.pretrain_epochs > 0:
            pretrain(dbn, torch.from_numpy(X), None, cfg, seed=seed, reporter=self._reporter())
        return dbn

    def _inputs(self, X, reset: bool, y="no_validation"):
        """X as float32 (and y, when given), checked as scikit-learn checks them; inputs
        outside [0, 1] for Bernoulli visibles draw a warning (the units model
        probabilities: rescale them, e.g. with MinMaxScaler)."""
        out = validate_data(self, X, y, dtype=np.float32, reset=reset)
        X, y = (out, None) if isinstance(y, str) else out
        if self.visible == "bernoulli" and X.size and (X.min() < 0 or X.max() > 1):
            warnings.warn(
                f"{type(self).__name__} with visible='bernoulli' models inputs in [0, 1]; X spans "
                f"[{X.min():g}, {X.max():g}]: rescale it (e.g. MinMaxScaler), or use visible='gaussian' on "
                "standardised inputs",
                UserWarning,
                stacklevel=3,
            )
        return X if y is None else (X, y)

    def _stack_from_arrays(self):
        from layerwise.stack import DeepBeliefNet

        dbn = DeepBeliefNet(self.n_features_in_, list(self.hidden_sizes_), unit=self.unit, visible=self.visible)
        dbn.load_state_dict({k: torch.from_numpy(v) for k, v in self.stack_.items()}, strict=False)
        return dbn.to(self._device())

    def _keep_stack(self, dbn) -> None:
        """The pretrained stack's parameters as the fitted arrays."""
        self.stack_ = {k: v.detach().cpu().numpy().copy() for k, v in dbn.model_state().items()}
        self.hidden_sizes_ = list(dbn.hidden)
        self._n_features_out = dbn.hidden[-1]

    def _state(self):
        return (
            {f"stack.{k}": v for k, v in self.stack_.items()},
            {"n_features_in_": int(self.n_features_in_), "hidden_sizes_": self.hidden_sizes_},
        )

    def _restore(self, arrays, scalars) -> None:
        self.stack_ = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("stack.")}
        self.hidden_sizes_ = list(scalars["hidden_sizes_"])
        self.n_features_in_ = scalars["n_features_in_"]
        self._n_features_out = self.hidden_sizes_[-1]

    def _features(self, X) -> np.ndarray:
        # in float64: float32 products round differently by a row's place in a BLAS block, and
        # a sample's features should not depend on its neighbours (scikit-learn checks this)
        dbn = self._stack_from_arrays().double()
        return dbn.transform(torch.from_numpy(X).double()).cpu().numpy().astype(np.float32)


class DBNTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, _Stack):
    """A stack of RBMs (or denoising autoencoders) pretrained greedily, layer by layer, on
    X; ``transform`` gives the top layer's mean activations.

    Fitted: ``stack_`` (the parameters by name, as in a layerwise pretrained artifact),
    ``hidden_sizes_``, ``n_features_in_``."""

    _parameter_constraints = dict(_PRETRAIN)

    def __init__(
        self,
        hidden=None,
        *,
        unit="rbm",
        visible="bernoulli",
        pretrain_epochs=10,
        pretrain_learning_rate=0.05,
        batch_size=100,
        cd_k=1,
        weight_decay=2e-4,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.hidden = hidden
        self.unit = unit
        self.visible = visible
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_learning_rate = pretrain_learning_rate
        self.batch_size = batch_size
        self.cd_k = cd_k
        self.weight_decay = weight_decay
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y=None):
        self._validate_params()
        X = self._inputs(X, reset=True)
        dbn = self._pretrain(X, int(check_random_state(self.random_state).randint(0, 2**31 - 1)))
        self._keep_stack(dbn)
        return self

    def transform(self, X):
        check_is_fitted(self)
        return self._features(self._inputs(X, reset=False))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class DBNClassifier(ClassifierMixin, _Stack):
    """A deep belief net: the stack pretrained on X (labels unused), unrolled into a
    sigmoid net with a softmax head, and fine-tuned on (X, y) by backpropagation
    (SGD with momentum, fixed epochs).

    Fitted: ``classes_``, ``stack_`` (the pretrained parameters, before fine-tuning: the
    guide's backup), ``net_`` (the fine-tuned net's parameters), ``hidden_sizes_``,
    ``n_features_in_``."""

    _parameter_constraints = {
        **_PRETRAIN,
        "finetune_epochs": [Interval(Integral, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
    }

    def __init__(
        self,
        hidden=None,
        *,
        unit="rbm",
        visible="bernoulli",
        pretrain_epochs=10,
        pretrain_learning_rate=0.05,
        batch_size=100,
        cd_k=1,
        weight_decay=2e-4,
        finetune_epochs=20,
        learning_rate=0.1,
        momentum=0.9,
        dropout=0.0,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.hidden = hidden
        self.unit = unit
        self.visible = visible
        self.pretrain_epochs = pretrain_epochs
        self.pretrain_learning_rate = pretrain_learning_rate
        self.batch_size = batch_size
        self.cd_k = cd_k
        self.weight_decay = weight_decay
        self.finetune_epochs = finetune_epochs
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.dropout = dropout
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        from layerwise.config import FinetuneConfig
        from layerwise.training.finetune import finetune

        self._validate_params()
        X, y = self._inputs(X, reset=True, y=y)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        dbn = self._pretrain(X, seed)
        self._keep_stack(dbn)
        n_labels = max(len(self.classes_), 2)
        clf = dbn.to_classifier(n_labels, dropout_hidden=self.dropout, seed=seed)
        cfg = dataclasses.replace(
            FinetuneConfig(),
            epochs=self.finetune_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            patience=None,
        )
        if self.finetune_epochs > 0:
            finetune(
                clf,
                torch.from_numpy(X),
                torch.from_numpy(codes.astype(np.int64)),
                None,
                None,
                cfg,
                seed=seed,
                reporter=self._reporter(),
            )
        self.net_ = {k: v.detach().cpu().numpy().copy() for k, v in clf.state_dict().items()}
        return self

    def _net(self):
        from layerwise.stack import build_classifier

        clf = build_classifier(
            [self.n_features_in_, *self.hidden_sizes_], max(len(self.classes_), 2), dropout_hidden=self.dropout
        )
        clf.load_state_dict({k: torch.from_numpy(v) for k, v in self.net_.items()})
        return clf.to(self._device()).eval()

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes), columns in the order of ``classes_``."""
        from layerwise.training.finetune import predict_proba

        check_is_fitted(self)
        X = self._inputs(X, reset=False)
        if len(self.classes_) == 1:  # one label seen: it is certain
            return np.ones((len(X), 1))
        return predict_proba(self._net().double(), torch.from_numpy(X).double()).cpu().numpy()  # see _features

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _state(self):
        arrays, scalars = super()._state()
        arrays.update({f"net.{k}": v for k, v in self.net_.items()})
        return arrays, {**scalars, "classes_": self.classes_.tolist(), "classes_dtype": str(self.classes_.dtype)}

    def _restore(self, arrays, scalars) -> None:
        super()._restore(arrays, scalars)
        self.net_ = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("net.")}
        dtype = scalars["classes_dtype"]
        self.classes_ = np.asarray(scalars["classes_"], dtype=object if dtype == "object" else dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        return tags
