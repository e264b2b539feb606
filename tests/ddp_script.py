"""Two-process CPU DDP runs of ``FlopsMonitor``, launched by ``tests/test_reliability_ddp.py`` in a subprocess.

``python tests/ddp_script.py OUT_DIR`` runs three fits one after the other with ``strategy="ddp"`` (gloo,
``devices=2``); Lightning relaunches this script for rank 1. Each rank writes ``OUT_DIR/<scenario>/rank<r>.json``:
``{"status": "ok" | "error", "error_type", "error", "report"}``. Scenarios:

- ``allreduce``: a model that runs ``torch.distributed.all_reduce`` in ``forward``, TensorBoard logger.
- ``strict``: the thop counter fails on rank 1 only, ``strict=True``.
- ``gap``: thop reports twice the MACs on rank 1 only, ``on_gap="raise"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_flops import FlopsMonitor
from lightning_flops.counters import thop_hooks
from lightning_flops.counters.base import RawCount

IN, HIDDEN, OUT, BATCH = 8, 16, 4, 4
MACS_PER_SAMPLE = IN * HIDDEN + HIDDEN * OUT  # in * hidden + hidden * out


class AllReduceModel(LightningModule):
    """``Linear -> all_reduce-normalised -> Linear``: every forward is a collective under DDP."""

    def __init__(self, collective: bool = True) -> None:
        super().__init__()
        self.collective = collective
        self.a, self.b = nn.Linear(IN, HIDDEN), nn.Linear(HIDDEN, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.collective and dist.is_available() and dist.is_initialized():
            scale = h.detach().pow(2).mean()
            dist.all_reduce(scale)  # raises locally on meta tensors: the counters then count in place
            h = h / (scale.sqrt() + 1.0)
        return self.b(torch.relu(h))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _RankOneFault:
    """Wraps the thop adapter: on global rank 1 only it raises (``"raise"``) or doubles its count (``"double"``)."""

    def __init__(self, inner: Any, kind: str) -> None:
        self.inner, self.kind, self.name = inner, kind, inner.name

    def can_count_on_meta(self, model: nn.Module) -> bool:
        return self.inner.can_count_on_meta(model)

    def count(self, model: nn.Module, args: tuple, kwargs: dict) -> RawCount:
        on_rank_one = dist.is_initialized() and dist.get_rank() == 1
        if on_rank_one and self.kind == "raise":
            raise RuntimeError("injected: thop fails on rank 1 only")
        raw = self.inner.count(model, args, kwargs)
        if on_rank_one and self.kind == "double":
            doubled = {m: {op: 2 * v for op, v in ops.items()} for m, ops in raw.module_operators.items()}
            return RawCount(macs=2 * raw.macs, module_operators=doubled, uncounted=raw.uncounted)
        return raw


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, IN, generator=generator), torch.randn(32, OUT, generator=generator))
    return DataLoader(data, batch_size=BATCH)


def run(out: Path, scenario: str) -> None:
    real_make_counter = thop_hooks.make_counter
    if scenario == "strict":
        thop_hooks.make_counter = lambda: _RankOneFault(real_make_counter(), "raise")
        monitor = FlopsMonitor(strict=True)
    elif scenario == "gap":
        thop_hooks.make_counter = lambda: _RankOneFault(real_make_counter(), "double")
        monitor = FlopsMonitor(on_gap="raise")
    else:
        monitor = FlopsMonitor()
    folder = out / scenario
    trainer = Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=2,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(folder),
        logger=TensorBoardLogger(str(folder), name="logs", version=0),
        callbacks=[monitor],
    )
    record: dict[str, Any] = {"status": "ok", "error_type": None, "error": None}
    try:
        trainer.fit(AllReduceModel(collective=scenario == "allreduce"), train_dataloaders=_loader())
    except Exception as err:  # recorded per rank; the test checks that both ranks end the same way
        record.update(status="error", error_type=type(err).__name__, error=str(err))
    finally:
        thop_hooks.make_counter = real_make_counter
    record["report"] = json.loads(monitor.report.to_json()) if monitor.report is not None else None
    record["global_step"] = trainer.global_step
    (folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    for scenario in ("allreduce", "strict", "gap"):
        run(out, scenario)


if __name__ == "__main__":
    main()
