"""The rules of a recipe's values: the choices a key allows, the interval a number must
lie in, the keys that "none" turns off. ``config`` checks every key against them."""

from __future__ import annotations

FILE_SOURCES = ("files", "npz", "idx", "csv", "images", "npy")  # sources read from data.train (and the rest)

CHOICES = {
    "data.source": ("mnist", "digits", "files", "npz", "idx", "csv", "images", "npy"),
    "precision": ("fp32", "tf32", "bf16"),
    "model.unit": ("rbm", "autoencoder"),
    "model.visible": ("bernoulli", "gaussian"),
    "finetune.optimizer": ("sgd", "adam"),
    "finetune.lr_schedule": ("constant", "exponential", "cosine"),
    "distributed.lr_correction": ("none", "sqrt", "linear"),
    "distributed.outer_optimizer": ("none", "nesterov"),
}

# key -> interval "[low, high]"; "(" or ")" marks an open end, "inf" no upper bound
BOUNDS = {
    "model.hidden": "[1, inf)",  # each hidden layer size
    "seed": "[0, 9223372036854775807]",  # torch generators take 64 bits; layer i is seeded seed + i
    "threads": "[1, inf)",
    "data.validation_fraction": "(0, 1)",
    "data.n_labels": "[2, inf)",
    "data.train_limit": "[1, inf)",
    "model.init_std": "[0, inf)",
    "pretrain.epochs": "[0, inf)",
    "pretrain.batch_size": "[1, inf)",
    "pretrain.learning_rate": "(0, inf)",
    "pretrain.momentum": "[0, 1)",
    "pretrain.final_momentum": "[0, 1)",
    "pretrain.momentum_switch_epoch": "[0, inf)",
    "pretrain.weight_decay": "[0, inf)",
    "pretrain.cd_k": "[1, inf)",
    "pretrain.sparsity_target": "(0, 1)",
    "pretrain.sparsity_cost": "[0, inf)",
    "pretrain.noise": "[0, 1)",
    "pretrain.monitor_samples": "[1, inf)",
    "finetune.epochs": "[0, inf)",
    "finetune.batch_size": "[1, inf)",
    "finetune.learning_rate": "(0, inf)",
    "finetune.momentum": "[0, 1)",
    "finetune.weight_decay": "[0, inf)",
    "finetune.lr_decay": "(0, 1]",
    "distributed.averaging_frequency": "[1, inf)",
    "distributed.timeout_minutes": "(0, inf)",
    "distributed.outer_lr": "(0, inf)",
    "distributed.outer_momentum": "[0, 1)",
    "guard.lr_factor": "(0, 1)",
    "guard.max_rollbacks": "[0, inf)",
    "guard.max_growth": "(1, inf)",
    "guard.rising_epochs": "[1, inf)",
    "guard.check_every": "[1, inf)",
    "guard.max_dead": "(0, 1]",
    "guard.max_drift": "(0, inf)",
    "guard.drift_floor": "[0, inf)",
    "checkpoint.every_epochs": "[1, inf)",
    "checkpoint.every_minutes": "(0, inf)",
    "checkpoint.every_batches": "[1, inf)",
    "finetune.dropout_input": "[0, 1)",
    "finetune.dropout_hidden": "[0, 1)",
    "finetune.patience": "[1, inf)",
    "finetune.max_norm": "(0, inf)",
}


# TOML has no null: "none" turns these off (and to_toml writes it for them)
NONE_MEANS_OFF = (
    "finetune.patience",
    "finetune.max_norm",
    "checkpoint.every_epochs",
    "checkpoint.every_minutes",
    "checkpoint.every_batches",
)


def limits(key: str) -> dict:
    """The check_int / check_range bounds of a key from its interval "[low, high)"."""
    interval = BOUNDS.get(key.split("[")[0])
    if interval is None:
        return {}
    num = lambda t: None if t == "inf" else (float(t) if "." in t or "e" in t else int(t))  # noqa: E731
    lo, hi = (num(t) for t in interval[1:-1].split(", "))
    out = {"low": lo, "high": hi}
    if interval[0] == "(":
        out["low_open"] = True
    if interval[-1] == ")" and hi is not None:
        out["high_open"] = True
    return out
