"""Lightning's private APIs that lightning-flops touches (checked against lightning 2.6.6), imported lazily inside the
functions: :func:`logs_hyperparams`, :func:`run_hparams` (the mirror of Lightning's private ``_log_hyperparams``),
:func:`default_hp_metric`, :func:`tensorboard_hparams`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def logs_hyperparams(holder: Any) -> bool:
    """Whether a LightningModule / LightningDataModule has its ``hparams_initial`` logged: the private
    ``_log_hyperparams`` flag that ``save_hyperparameters(logger=False)`` clears (lightning 2.6.6)."""
    return bool(getattr(holder, "_log_hyperparams", False))


LIGHTNING_CHECKED = ((2, 6), (2, 7))  # lightning >= 2.6, < 2.7: the shims below; outside, their public fallback


def lightning_checked() -> bool:
    """Whether the installed Lightning is within :data:`LIGHTNING_CHECKED` (read at each call)."""
    import lightning

    major, minor = (int("".join(c for c in part if c.isdigit()) or 0) for part in lightning.__version__.split(".")[:2])
    lower, upper = LIGHTNING_CHECKED
    return lower <= (major, minor) < upper


def callback_state_key(callback: Any, **key: Any) -> str:
    """``Callback._generate_state_key(**key)`` (lightning 2.6.6), the key under which a callback's state is saved;
    outside :data:`LIGHTNING_CHECKED` the same string built as 2.6.6 builds it (class qualname + ``repr(key)``)."""
    if lightning_checked() and hasattr(callback, "_generate_state_key"):
        return callback._generate_state_key(**key)
    return f"{type(callback).__qualname__}{key!r}"


def default_hp_metric(logger: Any) -> bool:
    """``TensorBoardLogger(default_hp_metric=...)``, kept as a private attribute (lightning 2.6.6)."""
    return bool(logger._default_hp_metric)


def tensorboard_hparams(logger: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` converted exactly as ``TensorBoardLogger.log_hyperparams`` converts them (lightning 2.6.6:
    ``lightning/fabric/loggers/tensorboard.py``, ``lightning/fabric/utilities/logger.py``)."""
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    return logger._sanitize_params(_flatten_dict(_convert_params(dict(params))))


def run_hparams(trainer: Any) -> tuple[dict[str, Any], bool]:
    """The hyperparameters Lightning logs for this run, and whether Lightning will log them (with ``hp_metric``).

    Mirrors ``lightning.pytorch.loggers.utilities._log_hyperparams`` (lightning 2.6.6): the module's and the
    datamodule's ``hparams_initial`` unless they were saved with ``logger=False`` (the private ``_log_hyperparams``
    flags: :func:`logs_hyperparams`), without LightningCLI's ``_class_path``.
    """
    pl_module = trainer.lightning_module
    datamodule = trainer.datamodule
    params: dict[str, Any] = {}
    logged = False
    if logs_hyperparams(pl_module):
        params.update(pl_module.hparams_initial)
        logged = True
    if datamodule is not None and logs_hyperparams(datamodule):
        params.update(datamodule.hparams_initial)
        logged = True
    params.pop("_class_path", None)
    # `Trainer(enable_autolog_hparams=...)` appeared in lightning 2.6.0; before it, Lightning always logs them
    return params, logged and getattr(trainer, "enable_autolog_hparams", True)


# (library, where, name, checked against), as in lightning_flops._compat.torch.PRIVATE_APIS
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = (
    ("lightning", "lightning.pytorch:Callback", "_generate_state_key", "lightning 2.6.6"),
    ("lightning", "instance:LightningModule", "_log_hyperparams", "lightning 2.6.6"),
    ("lightning", "instance:LightningDataModule", "_log_hyperparams", "lightning 2.6.6"),
    ("lightning", "lightning.fabric.loggers.tensorboard:TensorBoardLogger", "_sanitize_params", "lightning 2.6.6"),
    ("lightning", "instance:TensorBoardLogger", "_default_hp_metric", "lightning 2.6.6"),
    ("lightning", "lightning.fabric.utilities.logger", "_convert_params", "lightning 2.6.6"),
    ("lightning", "lightning.fabric.utilities.logger", "_flatten_dict", "lightning 2.6.6"),
)
