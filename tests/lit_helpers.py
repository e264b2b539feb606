"""Tiny Lightning pieces shared by the callback tests (a ``BoringModel``-like module, trainer and event readers).

Other test modules import these names; keep them stable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "HIDDEN",
    "IN_FEATURES",
    "OUT_FEATURES",
    "LinearStack",
    "RandomDataModule",
    "WrappedNet",
    "assert_same_weights_and_optimizer",
    "find_event_dirs",
    "hparams_session",
    "linear_stack_macs",
    "linear_stack_params",
    "linear_stack_step_flops",
    "make_trainer",
    "read_scalars",
    "requires_lightning",
]

IN_FEATURES, HIDDEN, OUT_FEATURES = 32, 64, 8
LIGHTNING_VERSION = tuple(int(part) for part in lightning.__version__.split(".")[:2])


def requires_lightning(version: str, feature: str) -> pytest.MarkDecorator:
    """Skip a test on a lightning older than ``version`` (``"2.6"``), which lacks ``feature`` (the minimum-version
    lane of .ci/run runs the suite on the lowest declared lightning)."""
    needed = tuple(int(part) for part in version.split("."))
    return pytest.mark.skipif(
        needed > LIGHTNING_VERSION, reason=f"{feature} needs lightning>={version}, found {lightning.__version__}"
    )


def linear_stack_macs(batch: int, in_features: int = IN_FEATURES, hidden: int = HIDDEN, out: int = OUT_FEATURES) -> int:
    """Analytic MACs of :class:`LinearStack` on ``[batch, in_features]``: two matrix products, bias not counted."""
    return batch * in_features * hidden + batch * hidden * out


def linear_stack_step_flops(batch: int) -> int:
    """Analytic FLOPs of one :class:`LinearStack` training step on ``[batch, IN_FEATURES]`` (the input needs no
    gradient): the forward's two matrix products, their weight gradients, and the second layer's input gradient."""
    return 2 * (3 * linear_stack_macs(batch) - batch * IN_FEATURES * HIDDEN)


def linear_stack_params(in_features: int = IN_FEATURES, hidden: int = HIDDEN, out: int = OUT_FEATURES) -> int:
    """Parameters of :class:`LinearStack`: two weight matrices and two biases."""
    return in_features * hidden + hidden + hidden * out + out


class LinearStack(LightningModule):
    """``Linear -> ReLU -> Linear`` regression on ``(x, y)`` batches, SGD with momentum (so optimizers hold state).

    Args:
        in_features: input width.
        hidden: hidden width.
        out: output width.
        lr: learning rate.
    """

    def __init__(self, in_features: int = IN_FEATURES, hidden: int = HIDDEN, out: int = OUT_FEATURES, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, in_features]`` to ``[B, out]``."""
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class WrappedNet(LightningModule):
    """A LightningModule around ``net``: MSE loss on ``(x, y)`` batches, ``optimizer(params, **optimizer_kwargs)``.

    Args:
        net: the module ``forward`` calls.
        optimizer: the optimizer class.
        optimizer_kwargs: its arguments (``lr`` ...).
    """

    def __init__(self, net: nn.Module, optimizer: type = torch.optim.SGD, **optimizer_kwargs: Any) -> None:
        super().__init__()
        self.net = net
        self._optimizer = optimizer
        self._optimizer_kwargs = optimizer_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self._optimizer(self.parameters(), **self._optimizer_kwargs)


class RandomDataModule(LightningDataModule):
    """Seeded random ``(x, y)`` regression data for :class:`LinearStack` (same data for every stage).

    Args:
        batch_size: samples per batch.
        samples: dataset length.
        seed: generator seed.
    """

    def __init__(self, batch_size: int = 4, samples: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(samples, IN_FEATURES, generator=generator)
        self.dataset = TensorDataset(x, torch.randn(samples, OUT_FEATURES, generator=generator))

    def _loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()


def make_trainer(tmp_path: Path, callbacks: list[Any] | None = None, **kwargs: Any) -> Trainer:
    """``Trainer(max_steps=2, limit_val_batches=0, ...)`` on CPU logging to ``TensorBoardLogger(tmp_path)``."""
    options: dict[str, Any] = {
        "max_steps": 2,
        "limit_val_batches": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
        "logger": TensorBoardLogger(str(tmp_path)),
    }
    options.update(kwargs)
    return Trainer(callbacks=callbacks or [], **options)


def find_event_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` holding TensorBoard event files."""
    return sorted({p.parent for p in Path(root).rglob("events.out.tfevents.*")})


def _accumulator(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def read_scalars(log_dir: Path) -> dict[str, float]:
    """The last value of every scalar tag in the event files of ``log_dir``."""
    accumulator = _accumulator(log_dir)
    return {tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]}


def hparams_session(log_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """The hparams plugin data of ``log_dir`` as TensorBoard reads it (its first summary per tag).

    Returns:
        ``(metric column tags of the experiment, {hparam name: value} of the session)``.
    """
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _accumulator(log_dir).PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    metrics = [info.name.tag for info in experiment.metric_infos]
    values: dict[str, Any] = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return metrics, values


def assert_same_weights_and_optimizer(module_a: Any, trainer_a: Any, module_b: Any, trainer_b: Any) -> None:
    """Bit-identical weights and buffers (``torch.equal``) and optimizer state of two fits."""
    weights_a, weights_b = module_a.state_dict(), module_b.state_dict()
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    optim_a, optim_b = trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict()
    assert optim_a["param_groups"] == optim_b["param_groups"]
    assert optim_a["state"].keys() == optim_b["state"].keys() and optim_a["state"]
    for index, state in optim_a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, optim_b["state"][index][key]), (index, key)
