"""Ctrl-C during the first-batch profile ends the fit as it ends without FlopsMonitor (issue 18, point 6): the
profile's thread is ended and waited for, so no thread is left inside torch at interpreter shutdown (the process
aborted with SIGABRT / SIGSEGV before), and nothing is half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def start(root: Path, monitor: bool) -> subprocess.Popen[str]:
    root.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    script = [sys.executable, str(REPO / "tests" / "signal_script.py"), str(root), "1" if monitor else "0"]
    return subprocess.Popen(script, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt_when_started(process: subprocess.Popen[str], root: Path) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not (root / "started").exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the slow forward never started"
        time.sleep(0.05)
    time.sleep(0.3)  # well inside the 30 s forward
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return process.returncode, output


@pytest.mark.slow
def test_ctrl_c_during_the_profile_exits_as_without_the_monitor(tmp_path: Path) -> None:
    plain, monitored = start(tmp_path / "plain", False), start(tmp_path / "monitored", True)  # side by side
    plain_code, plain_output = interrupt_when_started(plain, tmp_path / "plain")
    code, output = interrupt_when_started(monitored, tmp_path / "monitored")
    assert plain_code == 1, plain_output[-2000:]  # Lightning's graceful shutdown after KeyboardInterrupt
    assert code == plain_code, output[-2000:]  # -6 (SIGABRT) or -11 (SIGSEGV) before
    assert "Detected KeyboardInterrupt" in output
    assert "Fatal Python error" not in output
    written = [p.name for p in (tmp_path / "monitored").rglob("*") if "flops_report" in p.name]
    assert written == []  # interrupted before publishing: no report, and no temporary file left behind
