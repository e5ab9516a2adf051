"""Fitted estimators saved as layerwise artifacts: ``weights.safetensors`` (every fitted
array) and ``manifest.json`` (the class, its parameters, the fitted scalars), never pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from layerwise._checks import InvalidInput
from layerwise.storage.artifacts import read_artifact, write_artifact


class _Estimator(Protocol):
    """What ``SavesAsArtifact`` needs of the estimator it is mixed into."""

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...


class SavesAsArtifact:
    """``save(path)`` / ``cls.load(path)`` for an estimator that says what its fitted
    state is: ``_state() -> (arrays, scalars)`` and ``_restore(arrays, scalars)``."""

    def save(self: _Estimator, path) -> Path:
        """Write the fitted estimator to the folder ``path`` (which must not exist)."""
        check_is_fitted(self)
        params = self.get_params(deep=False)
        bad = [k for k, v in params.items() if not isinstance(v, (type(None), bool, int, float, str, list, tuple))]
        if bad:
            raise InvalidInput(
                f"{type(self).__name__}.save: parameter(s) {', '.join(bad)} are not plain values (an int "
                "random_state saves; a RandomState instance does not)"
            )
        arrays, scalars = self._state()
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        write_artifact(
            path,
            tensors,
            kind="estimator",
            config={},
            architecture={"type": "Estimator", "class": type(self).__name__, "params": params, "fitted": scalars},
        )
        return Path(path)

    @classmethod
    def load(cls, path):
        """The estimator saved in the folder ``path``, fitted as it was saved."""
        tensors, manifest = read_artifact(path)
        arch = manifest["architecture"]
        if manifest["kind"] != "estimator" or not isinstance(arch, dict) or arch.get("class") != cls.__name__:
            what = arch.get("class") if isinstance(arch, dict) and manifest["kind"] == "estimator" else manifest["kind"]
            raise InvalidInput(f"'{path}' holds a {what}, not a saved {cls.__name__}")
        est = cls(**arch["params"])
        est._restore({k: v.numpy() for k, v in tensors.items()}, arch["fitted"])
        return est
