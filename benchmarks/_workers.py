"""Measurements that ``benchmarks/run.py`` runs each in a fresh Python process.

Each worker is called as ``python benchmarks/_workers.py NAME '{"json": "kwargs"}'`` and prints one line
``RESULT {...}`` with its figures. A fresh process per measurement keeps first-call costs honest (nothing warmed by
an earlier case) and makes the peak resident set size (``ru_maxrss``) belong to that measurement alone.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULT_PREFIX = "RESULT "


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ first batch
def _first_batch_model(model: str, batch: int) -> tuple[nn.Module, Any]:
    """The model (random init, built in code) and its batch: images 224x224, or ``batch`` x 128 GPT-2 tokens."""
    if model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        net = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, 768 wide, vocab 50257 (no download)
        return net, torch.randint(0, net.config.vocab_size, (batch, 128))
    from examples.models import resnet50, vit_b16

    return {"resnet50": resnet50, "vit_b16": vit_b16}[model](), torch.randn(batch, 3, 224, 224)


def _loss(output: Any) -> torch.Tensor:
    """A scalar to run backward from: the sum of the output (of the logits of an HF output)."""
    logits = getattr(output, "logits", output)
    return logits.float().sum()


def first_batch(model: str, batch: int, rounds: int, step_rounds: int = 3) -> dict[str, Any]:
    """Cost of ``profile_model`` (all three counters) in units of one warm plain forward of the same batch.

    In one process that has imported ``lightning`` first (as every process that runs a Trainer has; it imports
    ``torch._dynamo``, which FlopCounterMode would otherwise import on its first call): two warm-up forwards, one more
    forward, the first ``profile_model`` call (cold), then ``rounds`` rounds of (plain forward, ``profile_model``,
    ``train_step_flops``, the three libraries run by hand on the real model; the last for the image models only),
    then ``step_rounds`` rounds of one real training step (forward + backward, training mode) without and one with
    :class:`~lightning_flops.train_step.StepObserver` counting it, as the callback does on the first batch. Each
    round's ratio divides by that round's forward, so that load from other processes hits numerator and denominator
    alike.
    """
    import lightning  # noqa: F401  (what a Trainer's process has loaded)

    import lightning_flops as lf
    from lightning_flops.train_step import StepObserver, train_step_flops

    torch.manual_seed(0)
    net, x = _first_batch_model(model, batch)
    net.eval()
    by_hand = copy.deepcopy(net) if model != "gpt2" else None  # thop leaves buffers on what it profiles

    def forward() -> None:
        with torch.no_grad():
            net(x)

    def profile() -> None:
        lf.profile_model(net, x)

    def train_step() -> None:
        net.train()  # the callback counts the step of a module in training mode
        try:
            train_step_flops(net, x)
        finally:
            net.eval()

    def real_step(observed: bool) -> None:
        observer = StepObserver()
        net.train()
        try:
            if observed:
                observer.start()
            _loss(net(x)).backward()
        finally:
            observer.stop()
            net.eval()
            net.zero_grad(set_to_none=True)

    def three_by_hand() -> None:
        import thop
        from fvcore.nn import FlopCountAnalysis
        from torch.utils.flop_counter import FlopCounterMode

        thop.profile(by_hand, inputs=(x,), verbose=False)
        analysis = FlopCountAnalysis(by_hand, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.total()
        with torch.no_grad(), FlopCounterMode(display=False):
            by_hand(x)

    for _ in range(2):
        forward()
    cold_forward = _timed(forward)
    cold = _timed(profile)
    forwards, profiles, steps, hands = [], [], [], []
    for _ in range(rounds):
        forwards.append(_timed(forward))
        profiles.append(_timed(profile))
        steps.append(_timed(train_step))
        if by_hand is not None:
            hands.append(_timed(three_by_hand))
    real_step(False)  # warm-up: the first backward allocates the gradients
    observed_extra = []  # (observed step - plain step) / forward, per round
    for i in range(step_rounds):
        round_forward = _timed(forward)
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {observed: _timed(lambda observed=observed: real_step(observed)) for observed in order}
        observed_extra.append((times[True] - times[False]) / round_forward)
    report = lf.profile_model(net, x)
    forward_s = statistics.median([cold_forward, *forwards])
    return {
        "model": model,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "forward_s": forward_s,
        "cold_forward_s": cold_forward,
        "cold_s": cold,
        "cold_ratio": cold / forward_s,
        "warm_s": statistics.median(profiles),
        "warm_ratio": statistics.median(p / f for p, f in zip(profiles, forwards, strict=True)),
        "train_step_s": statistics.median(steps),
        "train_step_ratio": statistics.median(s / f for s, f in zip(steps, forwards, strict=True)),
        "observed_step_extra_ratio": statistics.median(observed_extra),
        "observed_step_extras": observed_extra,
        "by_hand_s": statistics.median(hands) if hands else None,
        "by_hand_ratio": statistics.median(h / f for h, f in zip(hands, forwards, strict=True)) if hands else None,
        "devices": {name: result.device for name, result in report.counters.items()},
        "seconds": {name: result.seconds for name, result in report.counters.items()},
        "ok": {name: result.ok for name, result in report.counters.items()},
        "forwards": forwards,
        "profiles": profiles,
    }


def cold_bare(model: str, batch: int) -> dict[str, Any]:
    """The first ``profile_model`` call in a bare Python process (no ``lightning`` imported), per warm forward.

    This includes importing ``torch._dynamo`` (FlopCounterMode's dispatch is wrapped by ``torch._disable_dynamo``,
    which imports it on the first call): a cost that a script pays once, and a Trainer's process has already paid.
    """
    import lightning_flops as lf

    torch.manual_seed(0)
    net, x = _first_batch_model(model, batch)
    net.eval()
    for _ in range(2):
        with torch.no_grad():
            net(x)
    with torch.no_grad():
        forward_s = _timed(lambda: net(x))
    dynamo_before = "torch._dynamo" in sys.modules
    cold_s = _timed(lambda: lf.profile_model(net, x))
    return {"forward_s": forward_s, "cold_s": cold_s, "cold_ratio": cold_s / forward_s, "dynamo_before": dynamo_before}


# ------------------------------------------------------------------------------------------------ many modules
def many_modules(sizes: list[int]) -> dict[str, Any]:
    """``profile_model`` (all three counters) on ``nn.Sequential`` of ``n`` x ``Linear(4, 4)``, for each ``n``.

    The libraries are warmed on a one-layer model first, so each size measures the per-module cost only.
    """
    import lightning_flops as lf

    lf.profile_model(nn.Linear(4, 4), torch.randn(2, 4))
    out: dict[str, Any] = {}
    for n in sizes:
        net = nn.Sequential(*(nn.Linear(4, 4) for _ in range(n)))
        start = time.perf_counter()
        report = lf.profile_model(net, torch.randn(2, 4))
        seconds = time.perf_counter() - start
        out[str(n)] = {
            "seconds": seconds,
            "per_module_ms": 1e3 * seconds / n,
            "counters": {k: r.seconds for k, r in report.counters.items()},
            "exact": report.counters["torch"].macs == n * 2 * 4 * 4,  # batch * in * out per layer
            "ok": all(r.ok for r in report.counters.values()),
        }
    return out


# ----------------------------------------------------------------------------------------------- steady state
def steady_state(
    with_callback: bool, steps: int, width: int, depth: int, batch: int, lockstep_block: int = 0
) -> dict[str, Any]:
    """One ``Trainer.fit`` of an MLP whose weights dominate the process memory, with or without ``FlopsMonitor``.

    Returns training steps/s after the first batch (one over the median time from the end of one batch to the end
    of the next, batch 0 excluded; also the mean rate and the rate in process CPU time) and the peak RSS of the
    process, which holds exactly one fit.

    With ``lockstep_block > 0`` the fit runs in lockstep with a twin process, driven by ``run.py``: after batch 0
    it prints ``READY`` and waits for a line on stdin; then after every ``lockstep_block`` batches it prints
    ``BLOCK <seconds>`` (wall time of those batches) and waits again. Alternating the two fits block by block puts
    both under the same load from other processes, which separate fits seconds apart are not.
    """
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    class MLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [nn.Linear(width, width), nn.ReLU()]
            self.net = nn.Sequential(*layers, nn.Linear(width, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-3)  # no momentum: no optimizer state beside the grads

    class StepClock(Callback):
        def __init__(self) -> None:
            self.ends: list[float] = []  # end of each batch
            self.resumed: list[float] = []  # when the next batch could start (after a lockstep wait)
            self.cpu_ends: list[float] = []
            self.usage: list[tuple[float, float, int, int]] = []
            self.block_start = 0.0

        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            self.ends.append(now)
            self.cpu_ends.append(time.process_time())
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.usage.append((usage.ru_utime, usage.ru_stime, usage.ru_minflt, usage.ru_majflt))
            if lockstep_block and (len(self.ends) - 1) % lockstep_block == 0:
                print(f"BLOCK {now - self.block_start}" if len(self.ends) > 1 else "READY", flush=True)
                sys.stdin.readline()  # the twin runs its block meanwhile
                now = self.block_start = time.perf_counter()
            self.resumed.append(now)

    torch.manual_seed(0)
    model = MLP()
    data = TensorDataset(torch.randn(steps * batch, width), torch.randint(0, 10, (steps * batch,)))
    clock = StepClock()
    hook_seconds: list[float] = []
    callbacks: list[Callback] = []
    if with_callback:
        from lightning_flops import FlopsMonitor

        monitor = FlopsMonitor()
        real_hook = monitor.on_train_batch_start

        def timed_hook(trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            start = time.perf_counter()
            real_hook(trainer, pl_module, batch, batch_idx)
            if batch_idx > 0:  # the callback's own per-step cost after the first batch
                hook_seconds.append(time.perf_counter() - start)

        monitor.on_train_batch_start = timed_hook  # type: ignore[method-assign]
        callbacks.append(monitor)
    callbacks.append(clock)  # last: batch 0 ends after FlopsMonitor's own batch-0 work
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            logger=TensorBoardLogger(tmp),
            callbacks=callbacks,
            limit_val_batches=0,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(model, DataLoader(data, batch_size=batch))
        total = time.perf_counter() - start
    ends, cpu_ends = clock.ends, clock.cpu_ends
    step_s = [end - start for start, end in zip(clock.resumed, ends[1:], strict=False)]
    cpu_step_s = [b - a for a, b in itertools.pairwise(cpu_ends)]
    return {
        "with_callback": with_callback,
        "params": sum(p.numel() for p in model.parameters()),
        "weights_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "steps": len(ends),
        # the median step is robust to bursts of load from other processes; the mean rate is kept for reference
        "steps_per_s": 1 / statistics.median(step_s),
        "mean_steps_per_s": len(step_s) / sum(step_s),
        "cpu_steps_per_s": 1 / statistics.median(cpu_step_s),
        "first_batch_s": ends[0] - start,
        "usage_after_batch0": [b - a for a, b in zip(clock.usage[1], clock.usage[-1], strict=True)],
        "hook_s_per_step": statistics.mean(hook_seconds) if hook_seconds else 0.0,
        "median_step_s": statistics.median(step_s),
        "fit_s": total,
        "peak_rss_mb": peak_rss_mb(),
    }


# ------------------------------------------------------------------------------------------------- meta scale
def meta_scale(layers: int, seq: int, batch: int) -> dict[str, Any]:
    """``profile_model`` with all three counters on a ``TransformerLM`` built on the meta device."""
    import lightning_flops as lf
    from examples.models import transformer_lm, transformer_lm_macs, transformer_lm_params

    start = time.perf_counter()
    with torch.device("meta"):
        model = transformer_lm(layers=layers)
    build_s = time.perf_counter() - start
    tokens = torch.zeros(batch, seq, dtype=torch.long)
    start = time.perf_counter()
    report = lf.profile_model(model, tokens)
    profile_s = time.perf_counter() - start
    return {
        "layers": layers,
        "params": report.params.total,
        "analytic_params": transformer_lm_params(layers=layers),
        "build_s": build_s,
        "profile_s": profile_s,
        "peak_rss_mb": peak_rss_mb(),
        "analytic_macs": transformer_lm_macs(batch, seq, layers=layers),
        "counters": {
            name: {
                "ok": result.ok,
                "macs": result.macs,
                "device": result.device,
                "seconds": result.seconds,
                "error": result.error,
                "uncounted": [
                    f"{u.operator} in {u.module or '<root>'} ({u.reason}, {u.calls}x)" if hasattr(u, "operator") else u
                    for u in result.uncounted
                ],
                "by_operator": result.by_operator if result.ok else {},
            }
            for name, result in report.counters.items()
        },
    }


def deepseek_v3_macs(seq: int) -> int:
    """MACs of one DeepSeek-V3 forward (its own config, batch 1, ``seq`` tokens, logits at every position), written
    out from the config: MLA attention projections (q 7168 -> 1536 -> 128 x 192, kv 7168 -> 512 + 64, 512 ->
    128 x (128 + 128), o 128 x 128 -> 7168), QK^T (head dim 192) and AV (128) over 128 heads; 3 dense MLP layers
    (7168 x 18432, three matrices); 58 MoE layers: router 7168 x 256, one shared expert and 8 routed experts
    (7168 x 2048, three matrices each); the LM head 7168 x 129,280."""
    d, heads = 7168, 128
    projections = d * 1536 + 1536 * heads * 192 + d * 576 + 512 * heads * 256 + heads * 128 * d
    attention = heads * seq * seq * (192 + 128)
    dense, moe = 3 * d * 18432, d * 256 + 3 * d * 2048 + 8 * 3 * d * 2048
    return 61 * (seq * projections + attention) + 3 * seq * dense + 58 * seq * moe + seq * d * 129280


def moe_meta_scale(seq: int) -> dict[str, Any]:
    """``profile_model`` (torch counter) on DeepSeek-V3 by its own config, built on meta, ``moe_routing="balanced"``."""
    import transformers

    import lightning_flops as lf

    start = time.perf_counter()
    with torch.device("meta"):
        model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config())
    build_s = time.perf_counter() - start
    tokens = torch.zeros(1, seq, dtype=torch.long)
    start = time.perf_counter()
    report = lf.profile_model(model, tokens, counters=("torch",), device="meta", strict=True, moe_routing="balanced")
    profile_s = time.perf_counter() - start
    return {
        "seq": seq,
        "build_s": build_s,
        "profile_s": profile_s,
        "peak_rss_mb": peak_rss_mb(),
        "params": report.params.total,
        "active_per_token": report.params.active_per_token,
        "moe_routing": report.moe_routing,
        "macs": report.counters["torch"].macs,
        "macs_per_token": report.macs_per_token("torch"),
        "analytic_macs": deepseek_v3_macs(seq),
        "transformers": transformers.__version__,
    }


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "moe_meta_scale": moe_meta_scale,
    "first_batch": first_batch,
    "cold_bare": cold_bare,
    "many_modules": many_modules,
    "steady_state": steady_state,
    "meta_scale": meta_scale,
}


def main() -> None:
    """``python benchmarks/_workers.py NAME JSON_KWARGS``: run one worker, print ``RESULT {json}``."""
    name, kwargs = sys.argv[1], json.loads(sys.argv[2])
    threads = os.environ.get("BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    result = WORKERS[name](**kwargs)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
