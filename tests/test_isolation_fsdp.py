"""Sharded models (FSDP2 ``fully_shard`` and Lightning's ``ModelParallelStrategy``) on two CPU processes (gloo):
profiling counts global shapes on meta, leaves FSDP's state as it was, and training is bit-identical. The runs
happen in ``tests/fsdp_script.py``, in a subprocess with a timeout (a hang kills the process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fsdp_script import BATCH, CONV_MACS_PER_SAMPLE, IN, MACS_PER_SAMPLE, PARAMS

pytestmark = pytest.mark.ddp

TIMEOUT_S = 240
ROOT = Path(__file__).resolve().parent.parent


def run_scenario(out: Path, scenario: str) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fsdp_script.py"), str(out), scenario],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the {scenario} run hung: killed after {TIMEOUT_S} s")
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]
    return [json.loads((out / scenario / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def train_step_flops(batch: int) -> int:
    # forward + weight grads for both layers, input grads for the second only: 2 * (3 * fwd - first layer's dgrad)
    return 2 * (3 * batch * MACS_PER_SAMPLE - batch * IN * 16)


def test_fully_shard_is_counted_with_global_shapes_and_trains_as_before(tmp_path: Path) -> None:
    for record in run_scenario(tmp_path, "fully_shard"):
        for name, result in record["counters"].items():
            assert result == {"ok": True, "macs": BATCH * MACS_PER_SAMPLE, "device": "meta", "error": None}, name
        assert record["params"] == PARAMS
        assert record["train_step_flops"] == train_step_flops(BATCH)
        assert record["same_class"] and record["same_parameters"]
        assert record["sharded_after"] == ["DTensor"] * 4
        assert record["same_training"]
        for name, result in record["conv_counters"].items():
            assert result == {"ok": True, "macs": BATCH * CONV_MACS_PER_SAMPLE, "device": "meta", "error": None}, name
        for name, result in record["in_place_counters"].items():  # a sharded model is never counted in place
            assert not result["ok"] and "sharded (DTensor)" in result["error"], name


def test_model_parallel_strategy_fit_completes_with_the_same_weights(tmp_path: Path) -> None:
    for record in run_scenario(tmp_path, "lightning"):
        assert record["global_step"] == [3, 3]
        assert record["same_training"]
        for name, result in record["counters"].items():
            assert result["ok"] and result["macs"] == BATCH * MACS_PER_SAMPLE and result["device"] == "meta", name
        assert record["params"] == PARAMS
        assert record["train_step_flops"] == train_step_flops(BATCH)
