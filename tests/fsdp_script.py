"""Two-process CPU (gloo) runs of sharded models, launched by ``tests/test_isolation_fsdp.py`` in a subprocess.

``python tests/fsdp_script.py OUT_DIR fully_shard`` spawns two ranks that ``fully_shard`` (FSDP2) two identical
nets, profile one of them, then train both for three SGD steps and compare every parameter and momentum buffer
(gathered with ``full_tensor``) with ``torch.equal``. ``python tests/fsdp_script.py OUT_DIR lightning`` fits a
LightningModule that shards itself in ``configure_model`` with Lightning's ``ModelParallelStrategy`` (2 CPU
processes; Lightning relaunches this script for rank 1), with and without ``FlopsMonitor``, and compares the same.
Each rank writes ``OUT_DIR/<scenario>/rank<r>.json``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

IN, HIDDEN, OUT, BATCH, STEPS = 8, 16, 4, 4, 3
MACS_PER_SAMPLE = IN * HIDDEN + HIDDEN * OUT  # in * hidden + hidden * out
PARAMS = IN * HIDDEN + HIDDEN + HIDDEN * OUT + OUT  # global (unsharded) shapes
CONV_MACS_PER_SAMPLE = 4 * 6 * 6 * 3 * 3 * 3 + 4 * 6 * 6 * OUT  # conv (out_c * h * w * in_c * k * k) + linear


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def convnet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, OUT))


def shard(net: nn.Sequential) -> nn.Sequential:
    from torch.distributed.fsdp import fully_shard

    for layer in net:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    fully_shard(net)
    return net


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def same_state(a: nn.Module, b: nn.Module, opt_a: torch.optim.Optimizer, opt_b: torch.optim.Optimizer) -> bool:
    """Every parameter and momentum buffer equal (gathered: a collective, both ranks call it)."""
    same = all(torch.equal(gathered(p), gathered(q)) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        same &= torch.equal(gathered(opt_a.state[p]["momentum_buffer"]), gathered(opt_b.state[q]["momentum_buffer"]))
    return bool(same)


def counted(report: Any) -> dict[str, Any]:
    return {
        name: {"ok": r.ok, "macs": r.macs, "device": r.device, "error": r.error} for name, r in report.counters.items()
    }


def fully_shard_rank(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    import lightning_flops as lf
    from lightning_flops.train_step import train_step_flops

    torch.manual_seed(0)
    nets = [shard(mlp()), None]
    torch.manual_seed(0)
    nets[1] = shard(mlp())
    profiled, untouched = nets
    classes, params = type(profiled), [id(p) for p in profiled.parameters()]
    report = lf.profile_model(profiled, torch.randn(BATCH, IN))
    step_flops = train_step_flops(profiled, torch.randn(BATCH, IN))
    conv_report = lf.profile_model(shard(convnet()), torch.randn(BATCH, 3, 8, 8))
    in_place = lf.profile_model(profiled, torch.randn(BATCH, IN), device="model")  # refused: never in place
    record: dict[str, Any] = {
        "counters": counted(report),
        "params": report.params.total,
        "train_step_flops": step_flops,
        "conv_counters": counted(conv_report),
        "in_place_counters": counted(in_place),
        "same_class": type(profiled) is classes,
        "same_parameters": [id(p) for p in profiled.parameters()] == params,
        "sharded_after": [type(p).__name__ for p in profiled.parameters()],
    }
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in (profiled, untouched)]
    generator = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        x, y = torch.randn(BATCH, IN, generator=generator), torch.randn(BATCH, OUT, generator=generator)
        for net, optimizer in zip((profiled, untouched), optimizers, strict=True):
            optimizer.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            optimizer.step()
    record["same_training"] = same_state(profiled, untouched, *optimizers)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()
    leave_without_finalization()


def leave_without_finalization() -> None:
    """End this rank now, once its record is written and every rank got past a barrier: ``os._exit(0)``.

    FSDP's state (its mesh info holds the gloo group) keeps the group and its worker threads alive past
    ``destroy_process_group``; a worker that frees a finished work once interpreter finalization has begun aborts the
    process (SIGABRT, "terminate called without an active exception": the work's captured thread-local state holds
    the contextvars the autograd engine stashes during backward, and freeing it needs the GIL). torch 2.13,
    pytorch/pytorch#190489. Measured here on ``fully_shard``: 4 of 30 runs after a profile, 1 of 30 after only
    importing lightning_flops and fvcore (a longer teardown widens the window), none of 70 without either; the
    ``lightning`` scenario once in a full suite run. The records are on disk before this; nothing is left to check.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_fully_shard(out: Path) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(fully_shard_rank, args=(port, out), nprocs=2)


def run_lightning(out: Path) -> None:
    from lightning.pytorch import LightningModule, Trainer, seed_everything
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_flops as lf

    class Sharded(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def configure_model(self) -> None:
            shard(self.net)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.mse_loss(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def fit(monitor: lf.FlopsMonitor | None) -> tuple[Any, Any]:
        seed_everything(0)
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(32, IN, generator=generator), torch.randn(32, OUT, generator=generator))
        trainer = Trainer(
            accelerator="cpu",
            devices=2,
            strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
            max_steps=STEPS,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[monitor] if monitor else [],
            default_root_dir=str(out),
        )
        module = Sharded()
        trainer.fit(module, DataLoader(data, batch_size=BATCH))
        return module, trainer

    monitor = lf.FlopsMonitor()
    with_monitor, trainer = fit(monitor)
    without, other = fit(None)
    report = monitor.report
    record = {
        "global_step": [trainer.global_step, other.global_step],
        "counters": counted(report) if report else None,
        "params": report.params.total if report else None,
        "train_step_flops": report.train_step_flops if report else None,
        "same_training": same_state(with_monitor, without, trainer.optimizers[0], other.optimizers[0]),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    dist.barrier()  # both records written (the test reads them once the launching process's pipe closes)
    leave_without_finalization()


if __name__ == "__main__":
    target, scenario = Path(sys.argv[1]), sys.argv[2]
    (target / scenario).mkdir(parents=True, exist_ok=True)
    {"fully_shard": run_fully_shard, "lightning": run_lightning}[scenario](target / scenario)
