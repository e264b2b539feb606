"""Benchmarks of issues 6 and 12: what profiling costs, in ratios measured side by side, printed as one table.

Cases (``--case``):

* ``first_batch``: wall time of ``profile_model`` with all three counters divided by one warm plain forward
  (``eval()``, ``no_grad()``) of the same batch, for ResNet-50 and ViT-B/16 at batch 8, 224x224, and GPT-2 small at
  batch 8 x 128 tokens, CPU: the first call in a fresh process (cold, target <= 1.5) and the median of later calls
  (warm, target <= 0.3); the training-step count (``train_step_flops``, target <= 0.3); thop + fvcore +
  FlopCounterMode run by hand for reference.
* ``many_modules``: ``profile_model`` on 1k and 10k ``Linear(4, 4)``: 10k in < 10 s, per-module time flat (<= 1.5).
* ``steady_state``: training steps/s after the first batch with ``FlopsMonitor()`` vs without under glibc's default
  allocator (two fits in fresh processes taking turns block by block; every pair >= 0.99), and the peak RSS of the
  whole fit (<= 1.05), on an MLP whose weights dominate the process memory.
* ``meta_scale``: ``profile_model`` on an 8.3B-parameter ``transformer_lm(layers=40)`` built on the meta device, seq
  2048: seconds (< 10), peak RSS (< 1 GB), torch MACs exactly the analytic count; thop and fvcore reported.
* ``moe_meta_scale``: ``profile_model(..., moe_routing="balanced")`` (torch counter) on DeepSeek-V3 by its own config
  (671B parameters, 256 routed experts, top-8) built on meta, seq 128: seconds (< 10), peak RSS (< 1 GB), parameters
  and parameters per token (37,552,282,624) equal to the config's, torch MACs exactly the analytic count.

Usage::

    python benchmarks/run.py                 # every case, full size (about 5-6 minutes on 2 cores)
    python benchmarks/run.py --quick         # smoke run: fewer repeats and shorter fits
    python benchmarks/run.py --case meta_scale --json results.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_workers.py"
if str(ROOT) not in sys.path:  # the workers find the package the same way (benchmarks/_workers.py)
    sys.path.insert(0, str(ROOT))
RESULT_PREFIX = "RESULT "
CASES = ("first_batch", "many_modules", "steady_state", "meta_scale", "moe_meta_scale")

FIRST_BATCH_WARM_TARGET = 0.3
FIRST_BATCH_COLD_TARGET = 1.5
TRAIN_STEP_TARGET = 0.3
MANY_MODULES_SECONDS_TARGET = 10.0
MANY_MODULES_FLAT_TARGET = 1.5
STEADY_SPEED_TARGET = 0.99
STEADY_RSS_TARGET = 1.05
META_SECONDS_TARGET = 10.0
META_RSS_TARGET_MB = 1e9 / 2**20  # 1 GB = 10^9 bytes, in MiB


@dataclass
class Row:
    """One line of the result table.

    Args:
        case: what was measured.
        measured: the raw figures (seconds, MiB, MACs) behind the ratio.
        ratio: the number compared with the target, formatted.
        target: the target, e.g. ``"<= 1.5"``; ``"info"`` for reference rows.
        result: ``"pass"``, ``"FAIL"``, ``"info"``, ``"skip"`` or ``"ERROR"``.
    """

    case: str
    measured: str
    ratio: str
    target: str
    result: str


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def run_worker(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run ``benchmarks/_workers.py NAME`` in a fresh Python process and return its ``RESULT`` JSON."""
    env = _worker_env()
    proc = subprocess.run(
        [sys.executable, str(WORKER), name, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    raise RuntimeError(f"worker {name} exited with {proc.returncode}: {tail[0]}")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _read_until(proc: subprocess.Popen[str], prefix: str) -> str:
    """The rest of the next stdout line of ``proc`` that starts with ``prefix`` (other output is skipped)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise RuntimeError(f"steady_state worker exited with {proc.wait()} before printing {prefix.strip()!r}")


def run_lockstep_pair(
    shape: dict[str, Any],
    blocks: int,
    start_with_callback_first: bool = False,
    env: dict[str, str] | None = None,
    control: bool = False,
) -> tuple[dict[bool, list[float]], dict[bool, dict]]:
    """Two ``steady_state`` fits (with and without the callback) that take turns, one block of steps at a time.

    ``control``: both fits run without the callback (an A/A pair: how far two identical fits differ).

    Returns:
        Block wall times per fit (``True``: with ``FlopsMonitor``) and each fit's ``RESULT``.
    """
    # which fit starts (and so allocates its weights) first alternates between pairs: the first process to take
    # memory may get it in larger pages, a machine effect that would otherwise favour one side
    order = (True, False) if start_with_callback_first else (False, True)
    procs = {
        key: subprocess.Popen(
            [sys.executable, str(WORKER), "steady_state", json.dumps({"with_callback": key and not control, **shape})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**_worker_env(), **(env or {})},
            cwd=ROOT,
        )
        for key in order
    }
    try:
        for key in order:
            _read_until(procs[key], "READY")  # both have imported, built the model and finished batch 0
        times: dict[bool, list[float]] = {False: [], True: []}
        for i in range(blocks):
            for key in (False, True) if i % 2 == 0 else (True, False):  # ABBA
                proc = procs[key]
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                times[key].append(float(_read_until(proc, "BLOCK ")))
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")  # release the last batch; the fit then ends
            proc.stdin.flush()
        results = {key: json.loads(_read_until(proc, RESULT_PREFIX)) for key, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return times, results


# ------------------------------------------------------------------------------------------------------ cases
def case_first_batch(quick: bool, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """First-batch cost of ``profile_model`` for ResNet-50, ViT-B/16 and GPT-2 small (one fresh process per model)."""
    batch, rounds = 8, (2 if quick else 5)  # the target is defined at batch 8: --quick only repeats less
    rows, raw = [], {}
    for model in ("resnet50", "vit_b16", "gpt2"):
        log(f"first_batch: {model}, batch {batch}, {rounds} warm rounds")
        r = run_worker("first_batch", model=model, batch=batch, rounds=rounds, step_rounds=2 if quick else 3)
        log(f"first_batch: {model}, the first call in a bare process")
        bare = run_worker("cold_bare", model=model, batch=batch)
        raw[model] = {**r, "bare": bare}
        name = f"first_batch {model} b{batch}" + (" x 128 tokens" if model == "gpt2" else " 224x224")
        fwd = f"forward {r['forward_s']:.3f} s"
        where = ", ".join(f"{k}@{v}" for k, v in r["devices"].items())
        failed = [k for k, ok in r["ok"].items() if not ok]
        where += f"; FAILED: {', '.join(failed)}" if failed else ""
        extras = ", ".join(f"{e:+.3f}" for e in r["observed_step_extras"])
        rows += [
            Row(f"{name}: cold (1st call in a process that imported lightning, as a Trainer's has)",
                f"{r['cold_s']:.3f} s / {fwd}", f"{r['cold_ratio']:.2f}", f"<= {FIRST_BATCH_COLD_TARGET}",
                _verdict(r["cold_ratio"] <= FIRST_BATCH_COLD_TARGET and not failed)),
            Row(f"{name}: cold in a bare process (a script: includes importing torch._dynamo)",
                f"{bare['cold_s']:.3f} s / forward {bare['forward_s']:.3f} s", f"{bare['cold_ratio']:.2f}", "info",
                "info"),
            Row(f"{name}: warm (later calls, median of {rounds})", f"{r['warm_s']:.3f} s / {fwd} ({where})",
                f"{r['warm_ratio']:.2f}", f"<= {FIRST_BATCH_WARM_TARGET}",
                _verdict(r["warm_ratio"] <= FIRST_BATCH_WARM_TARGET and not failed)),
            Row(f"{name}: training step observed by StepObserver (what the callback adds to the real first step)",
                f"(observed - plain step) / forward per round: {extras}", f"{r['observed_step_extra_ratio']:.2f}",
                f"<= {TRAIN_STEP_TARGET}", _verdict(r["observed_step_extra_ratio"] <= TRAIN_STEP_TARGET)),
            Row(f"{name}: training-step count (train_step_flops, meta forward + backward)",
                f"{r['train_step_s']:.3f} s / {fwd}", f"{r['train_step_ratio']:.2f}", f"<= {TRAIN_STEP_TARGET}",
                _verdict(r["train_step_ratio"] <= TRAIN_STEP_TARGET)),
        ]  # fmt: skip
        if r["by_hand_s"] is not None:
            rows.append(Row(f"{name}: thop+fvcore+FCM by hand on the real model", f"{r['by_hand_s']:.3f} s / {fwd}",
                            f"{r['by_hand_ratio']:.2f}", "info (~3.2)", "info"))  # fmt: skip
    return rows, raw


def case_many_modules(quick: bool, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """Per-module overhead: ``profile_model`` on 1k and 10k ``Linear(4, 4)`` in a fresh process."""
    del quick  # the target is defined at 10k modules
    sizes = [1000, 10000]
    log(f"many_modules: nn.Sequential of {sizes} x Linear(4, 4), all three counters")
    r = run_worker("many_modules", sizes=sizes)
    small, large = r[str(sizes[0])], r[str(sizes[1])]
    per_counter = ", ".join(f"{k} {v:.1f} s" for k, v in large["counters"].items())
    flat = large["per_module_ms"] / small["per_module_ms"]
    exact = large["exact"] and small["exact"] and large["ok"] and small["ok"]
    rows = [
        Row(f"many_modules {sizes[1]} x Linear(4, 4): profile_model seconds",
            f"{large['seconds']:.1f} s ({per_counter}); {large['per_module_ms']:.2f} ms per module",
            f"{large['seconds']:.1f}", f"< {MANY_MODULES_SECONDS_TARGET:.0f} s",
            _verdict(large["seconds"] < MANY_MODULES_SECONDS_TARGET and exact)),
        Row(f"many_modules: per-module time {sizes[1]} / {sizes[0]} modules",
            f"{large['per_module_ms']:.2f} / {small['per_module_ms']:.2f} ms per module", f"{flat:.2f}",
            f"<= {MANY_MODULES_FLAT_TARGET}", _verdict(flat <= MANY_MODULES_FLAT_TARGET)),
    ]  # fmt: skip
    return rows, r


def _callback_unavailable() -> str | None:
    """Why ``lightning_flops.FlopsMonitor`` cannot be imported here, or ``None`` when it can."""
    try:
        if importlib.util.find_spec("lightning_flops.callback") is None:
            return "no module lightning_flops.callback"
        import lightning_flops

        lightning_flops.FlopsMonitor  # noqa: B018
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


# glibc grows its mmap/trim thresholds from what a process happens to free first, so two identical fits can take
# 10x different page faults per step (measured: 580 to 8,200): the speed target is measured with the thresholds fixed,
# the same for both fits, and the default allocator is shown beside it.
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "268435456"}


def _steady_pairs(
    shape: dict[str, Any],
    blocks: int,
    pairs: int,
    env: dict[str, str],
    label: str,
    log: Callable[[str], None],
    control: bool = False,
) -> dict[str, Any]:
    """Run ``pairs`` lockstep pairs of fits (with and without the callback) under extra environment ``env``;
    ``control``: both without it."""
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    block_ratios: list[float] = []
    pair_ratios: list[float] = []
    for i in range(pairs):
        log(f"steady_state ({label}): pair {i + 1}/{pairs} of fits with and without FlopsMonitor, {blocks} blocks")
        times, results = run_lockstep_pair(
            shape, blocks, start_with_callback_first=i % 2 == 1, env=env, control=control
        )
        ratios = [without / with_ for with_, without in zip(times[True], times[False], strict=True)]
        block_ratios += ratios
        pair_ratios.append(statistics.median(ratios))
        log(f"steady_state ({label}): pair {i + 1} speed ratio {pair_ratios[-1]:.3f}")
        for key in runs:
            runs[key].append(results[key])
    return {"runs": runs, "block_ratios": block_ratios, "pair_ratios": pair_ratios}


def case_steady_state(quick: bool, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """Steps/s and peak RSS of fits with vs without ``FlopsMonitor``, each fit in a fresh process.

    The two fits of a pair run in lockstep: block by block, in ABBA order, so both see the same load from other
    processes; the speed ratio is the median over all blocks of (block time without) / (block time with).
    """
    why = _callback_unavailable()
    if why is not None:
        reason = f"callback not available (lightning_flops.FlopsMonitor cannot be imported: {why})"
        return [
            Row("steady_state: steps/s with / without FlopsMonitor", reason, "-", f">= {STEADY_SPEED_TARGET}", "skip"),
            Row("steady_state: peak RSS with / without FlopsMonitor", reason, "-", f"<= {STEADY_RSS_TARGET}", "skip"),
        ], {"skipped": reason}
    pairs, blocks, block = (2, 6, 3) if quick else (6, 12, 3)
    # ~144 MB of weights (+ as much in gradients) and a small batch: memory is the weights', the steps are short,
    # so per-step overhead of the callback's hooks would show
    shape = {"width": 2048, "depth": 9, "batch": 8, "steps": 1 + blocks * block, "lockstep_block": block}
    default = _steady_pairs(shape, blocks, pairs, {}, "default allocator", log)  # what users run: the target
    pinned = _steady_pairs(shape, blocks, 2, PINNED_MALLOC, "pinned allocator", log)
    # the noise floor of the pair ratio: two fits without the callback, measured the same way
    control = _steady_pairs(shape, blocks, 1 if quick else 3, {}, "control, no callback in either", log, control=True)
    runs = default["runs"]
    speed = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in runs.items()}
    cpu_speed = {k: statistics.median(r["cpu_steps_per_s"] for r in v) for k, v in runs.items()}
    rss = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    first = {k: statistics.median(r["first_batch_s"] for r in v) for k, v in runs.items()}
    weights = runs[False][0]["weights_mb"]
    speed_ratio, rss_ratio = statistics.median(default["block_ratios"]), rss[True] / rss[False]
    worst_pair = min(default["pair_ratios"])
    hook_us = 1e6 * statistics.median(r["hook_s_per_step"] for r in runs[True])
    step_ms = 1e3 * statistics.median(r["median_step_s"] for r in runs[True])
    steps_after = shape["steps"] - 1

    def faults_per_step(result: dict[str, Any]) -> dict[bool, float]:
        return {k: statistics.median(r["usage_after_batch0"][2] for r in v) / steps_after for k, v in result.items()}

    faults, pinned_faults = faults_per_step(runs), faults_per_step(pinned["runs"])
    control_pairs = ", ".join(f"{r:.3f}" for r in control["pair_ratios"])
    control_faults = {
        k: ", ".join(f"{r['usage_after_batch0'][2] / steps_after:.0f}" for r in v) for k, v in control["runs"].items()
    }
    default_pairs = ", ".join(f"{r:.3f}" for r in default["pair_ratios"])
    pinned_pairs = ", ".join(f"{r:.3f}" for r in pinned["pair_ratios"])
    rows = [
        Row(f"steady_state MLP {weights:.0f} MB weights, glibc's default allocator: steps/s after batch 0 with / "
            f"without FlopsMonitor, worst of {pairs} pairs of fits in lockstep (median of {blocks} interleaved "
            f"{block}-step blocks each)",
            f"pairs {default_pairs}; median step {speed[True]:.2f} / {speed[False]:.2f} steps/s", f"{worst_pair:.3f}",
            f">= {STEADY_SPEED_TARGET} in every pair", _verdict(worst_pair >= STEADY_SPEED_TARGET)),
        Row("steady_state: same, median over all blocks of all pairs", f"{len(default['block_ratios'])} blocks",
            f"{speed_ratio:.3f}", f">= {STEADY_SPEED_TARGET}", _verdict(speed_ratio >= STEADY_SPEED_TARGET)),
        Row("steady_state: minor page faults per step after batch 0, with / without (default allocator)",
            f"{faults[True]:.0f} / {faults[False]:.0f}", f"{faults[True] / max(faults[False], 1):.2f}", "info", "info"),
        Row(f"steady_state: control, {len(control['pair_ratios'])} pairs of two fits WITHOUT FlopsMonitor (A/A), "
            "default allocator, same lockstep: worst pair",
            f"pairs {control_pairs}; page faults per step of each fit {control_faults[True]} / {control_faults[False]}",
            f"{min(control['pair_ratios']):.3f}", "info (1.000 if fits were alike)", "info"),
        Row("steady_state: same, median step in process CPU time",
            f"{cpu_speed[True]:.2f} / {cpu_speed[False]:.2f} steps/CPU-s", f"{cpu_speed[True] / cpu_speed[False]:.3f}",
            "info", "info"),
        Row("steady_state: with glibc's malloc thresholds pinned the same for both fits (2 pairs)",
            f"pairs {pinned_pairs}; page faults per step {pinned_faults[True]:.0f} / {pinned_faults[False]:.0f}",
            f"{statistics.median(pinned['block_ratios']):.3f}", "info", "info"),
        Row("steady_state: FlopsMonitor's own hook time per step after batch 0 / median step (in-process)",
            f"{hook_us:.1f} us / {step_ms:.1f} ms", f"{1 - hook_us * 1e-6 / (step_ms * 1e-3):.6f}", "info", "info"),
        Row(f"steady_state MLP {weights:.0f} MB weights: peak RSS of the fit (median of {pairs})",
            f"{rss[True]:.0f} / {rss[False]:.0f} MB", f"{rss_ratio:.3f}", f"<= {STEADY_RSS_TARGET}",
            _verdict(rss_ratio <= STEADY_RSS_TARGET)),
        Row("steady_state: first batch (fit start to end of batch 0)", f"{first[True]:.2f} / {first[False]:.2f} s",
            f"{first[True] / first[False]:.2f}", "info", "info"),
    ]  # fmt: skip
    return rows, {"pinned": pinned, "default": default, "control": control}


def case_meta_scale(quick: bool, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """``profile_model`` on an 8.3B-parameter TransformerLM built on meta, in a fresh process."""
    del quick  # the full 8.3B model takes seconds: the smoke run measures the real target
    layers, seq = 40, 2048
    log(f"meta_scale: transformer_lm(layers={layers}) on meta, seq {seq}")
    r = run_worker("meta_scale", layers=layers, seq=seq, batch=1)
    name = f"meta_scale {r['params'] / 1e9:.1f}B params, seq {seq}"
    torch_result = r["counters"]["torch"]
    exact = torch_result["ok"] and torch_result["macs"] == r["analytic_macs"]
    torch_ratio = f"{torch_result['macs'] / r['analytic_macs']:.6f}" if torch_result["ok"] else "-"
    rows = [
        Row(f"{name}: profile_model seconds", f"{r['profile_s']:.2f} s (build on meta {r['build_s']:.2f} s)",
            f"{r['profile_s']:.2f}", f"< {META_SECONDS_TARGET:.0f} s", _verdict(r["profile_s"] < META_SECONDS_TARGET)),
        Row(f"{name}: peak RSS of the process", f"{r['peak_rss_mb']:.0f} MB",
            f"{r['peak_rss_mb']:.0f}", f"< {META_RSS_TARGET_MB:.0f} MB (1 GB)",
            _verdict(r["peak_rss_mb"] < META_RSS_TARGET_MB)),
        Row(f"{name}: torch MACs / analytic", f"{torch_result['macs']} / {r['analytic_macs']} MACs",
            torch_ratio, "== 1 exactly", _verdict(exact)),
    ]  # fmt: skip
    for counter in ("thop", "fvcore"):
        c = r["counters"][counter]
        if c["ok"]:
            missing = [u for u in c["uncounted"] if "attention" in u] or c["uncounted"]
            why = f"; does not count {missing[0]}" if missing else ""
            why += f" and {len(missing) - 1} more like it" if len(missing) > 1 else ""
            rows.append(
                Row(f"{name}: {counter} MACs / torch", f"{c['macs']} MACs on {c['device']}{why}",
                    f"{c['macs'] / torch_result['macs']:.4f}" if torch_result["ok"] else "-", "reported", "pass")
            )  # fmt: skip
        else:
            rows.append(Row(f"{name}: {counter}", f"failed: {c['error']}", "-", "reported", _verdict(bool(c["error"]))))
    return rows, r


#: DeepSeek-V3 by its own config (transformers.DeepseekV3Config()): parameters, and those one token passes through
#: (the shared parts + 8 of 256 routed experts in each of 58 MoE layers: its paper's "37B activated").
DEEPSEEK_V3_PARAMS = 671_026_404_352
DEEPSEEK_V3_ACTIVE_PER_TOKEN = DEEPSEEK_V3_PARAMS - 58 * (256 - 8) * 3 * 7168 * 2048  # 37,552,282,624


def case_moe_meta_scale(quick: bool, log: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    """``profile_model(moe_routing="balanced")`` on DeepSeek-V3 (671B) built on meta, in a fresh process."""
    del quick  # the full model takes seconds: the smoke run measures the real target
    seq = 128
    log(f"moe_meta_scale: DeepSeek-V3 (transformers.DeepseekV3Config()) on meta, seq {seq}, moe_routing='balanced'")
    if importlib.util.find_spec("transformers") is None:
        return [Row("moe_meta_scale", "transformers is not installed", "-", "-", "skip")], {}
    r = run_worker("moe_meta_scale", seq=seq)
    name = f"moe_meta_scale DeepSeek-V3 {r['params'] / 1e9:.0f}B params, seq {seq}"
    rows = [
        Row(f"{name}: profile_model seconds", f"{r['profile_s']:.2f} s (build on meta {r['build_s']:.2f} s)",
            f"{r['profile_s']:.2f}", f"< {META_SECONDS_TARGET:.0f} s", _verdict(r["profile_s"] < META_SECONDS_TARGET)),
        Row(f"{name}: peak RSS of the process", f"{r['peak_rss_mb']:.0f} MB", f"{r['peak_rss_mb']:.0f}",
            f"< {META_RSS_TARGET_MB:.0f} MB (1 GB)", _verdict(r["peak_rss_mb"] < META_RSS_TARGET_MB)),
        Row(f"{name}: params total / by its config", f"{r['params']:,} / {DEEPSEEK_V3_PARAMS:,}",
            f"{r['params'] / DEEPSEEK_V3_PARAMS:.6f}", "== 1 exactly", _verdict(r["params"] == DEEPSEEK_V3_PARAMS)),
        Row(f"{name}: params active per token / by its config",
            f"{r['active_per_token']:,} / {DEEPSEEK_V3_ACTIVE_PER_TOKEN:,}",
            f"{r['active_per_token'] / DEEPSEEK_V3_ACTIVE_PER_TOKEN:.6f}", "== 1 exactly",
            _verdict(r["active_per_token"] == DEEPSEEK_V3_ACTIVE_PER_TOKEN)),
        Row(f"{name}: torch MACs / analytic (balanced routing, exact for top-k)",
            f"{r['macs']:,} / {r['analytic_macs']:,} MACs; {r['macs_per_token']:,.0f} MACs per token",
            f"{r['macs'] / r['analytic_macs']:.6f}", "== 1 exactly",
            _verdict(r["macs"] == r["analytic_macs"] and r["moe_routing"] == "balanced")),
    ]  # fmt: skip
    return rows, r


CASE_FUNCTIONS: dict[str, Callable[[bool, Callable[[str], None]], tuple[list[Row], dict[str, Any]]]] = {
    "first_batch": case_first_batch,
    "many_modules": case_many_modules,
    "steady_state": case_steady_state,
    "meta_scale": case_meta_scale,
    "moe_meta_scale": case_moe_meta_scale,
}


# ------------------------------------------------------------------------------------------------------ output
def format_table(rows: list[Row]) -> str:
    """A Markdown table of ``rows``: case, measured, ratio, target, result."""
    lines = ["| case | measured | ratio | target | result |", "|---|---|---|---|---|"]
    lines += [f"| {r.case} | {r.measured} | {r.ratio} | {r.target} | {r.result} |" for r in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """Date, CPU, cores, torch threads and versions, for the record."""
    import torch

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{datetime.date.today().isoformat()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, load average {load}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the selected cases and print one table; exit status 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repeats, shorter fits")
    parser.add_argument("--case", choices=CASES, action="append", help="run only this case (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every raw figure to this JSON file")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    start_line = machine_line()
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for case in args.case or CASES:
        try:
            case_rows, raw[case] = CASE_FUNCTIONS[case](args.quick, log)
        except Exception as err:  # one broken case must not hide the others
            case_rows, raw[case] = [Row(case, f"{type(err).__name__}: {err}", "-", "-", "ERROR")], {"error": str(err)}
        rows += case_rows
    print(f"machine: {start_line}")
    print(f"end load average: {', '.join(f'{v:.2f}' for v in os.getloadavg())}{' (--quick)' if args.quick else ''}")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": start_line, "quick": args.quick, "cases": raw}, indent=2))
    return 1 if any(r.result in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
