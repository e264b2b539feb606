"""Two-process CPU DDP (gloo) runs of ``FlopsMonitor``: no hang, one set of metrics, one report, ranks agree, and a
failure on one rank ends both ranks the same way. The runs happen once, in ``tests/ddp_script.py``, launched in a
subprocess with a timeout (``strategy="ddp"`` relaunches the script for rank 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.ddp_script import BATCH, MACS_PER_SAMPLE
from tests.lit_helpers import find_event_dirs

pytestmark = pytest.mark.ddp

TIMEOUT_S = 240
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "ddp_script.py"), str(out)],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # rank 1 joins this session: one killpg ends both on a hang
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the DDP run hung: killed after {TIMEOUT_S} s")
    assert process.returncode == 0, output.decode(errors="replace")[-4000:]
    return out


def rank_records(out: Path, scenario: str) -> list[dict[str, Any]]:
    return [json.loads((out / scenario / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_allreduce_model_trains_on_both_ranks(ddp_out: Path) -> None:
    records = rank_records(ddp_out, "allreduce")
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert [r["global_step"] for r in records] == [2, 2]


def test_allreduce_model_logs_one_set_of_metrics_in_one_event_file(ddp_out: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = sorted((ddp_out / "allreduce").rglob("events.out.tfevents.*"))
    assert len(event_files) == 1
    accumulator = EventAccumulator(str(event_files[0]), size_guidance={"scalars": 0})
    accumulator.Reload()
    compute_tags = [tag for tag in accumulator.Tags()["scalars"] if tag.startswith("compute/")]
    assert "compute/torch/macs" in compute_tags
    assert all(len(accumulator.Scalars(tag)) == 1 for tag in compute_tags)  # logged once, by rank zero
    assert accumulator.Scalars("compute/torch/macs")[0].value == MACS_PER_SAMPLE  # in * hidden + hidden * out
    assert accumulator.Scalars("compute/thop/flops")[0].value == 2 * MACS_PER_SAMPLE


def test_allreduce_model_report_is_written_once(ddp_out: Path) -> None:
    reports = sorted((ddp_out / "allreduce").rglob("flops_report*.json"))
    assert [p.name for p in reports] == ["flops_report.json"]
    assert reports[0].parent == find_event_dirs(ddp_out / "allreduce")[0]
    data = json.loads(reports[0].read_text())
    assert data["counters"]["torch"]["macs"] == BATCH * MACS_PER_SAMPLE  # per-rank batch, whole call


def test_allreduce_model_profiles_agree_across_ranks(ddp_out: Path) -> None:
    reports = [r["report"] for r in rank_records(ddp_out, "allreduce")]
    summaries = [
        {name: (c["ok"], c["macs"], c["device"]) for name, c in report["counters"].items()} for report in reports
    ]
    assert summaries[0] == summaries[1]
    assert summaries[0]["torch"] == (True, BATCH * MACS_PER_SAMPLE, "meta")
    assert summaries[0]["thop"] == (True, BATCH * MACS_PER_SAMPLE, "meta")
    # fvcore's JIT trace cannot follow a collective: a clear failure, the same on both ranks
    assert all("ProcessGroup" in report["counters"]["fvcore"]["error"] for report in reports)


@pytest.mark.parametrize(
    ("scenario", "error_type", "rank_one_says"),
    [
        ("strict", "CounterError", "counter 'thop' failed: RuntimeError: injected: thop fails on rank 1 only"),
        ("gap", "FlopsGapError", "thop vs torch: 50.00% total"),
    ],
)
def test_failure_on_one_rank_stops_both_ranks_the_same_way(
    ddp_out: Path, scenario: str, error_type: str, rank_one_says: str
) -> None:
    rank_zero, rank_one = rank_records(ddp_out, scenario)
    assert (rank_zero["status"], rank_zero["error_type"]) == ("error", error_type)
    assert (rank_one["status"], rank_one["error_type"]) == ("error", error_type)
    assert "on another rank" in rank_zero["error"]
    assert rank_one_says in rank_one["error"]
    assert rank_zero["global_step"] == rank_one["global_step"] == 0  # stopped at the first batch, on both
