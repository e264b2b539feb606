"""The TensorBoard hparams table shows the ``compute/*`` columns beside the module's hyperparameters, in one session.

TensorBoard keeps only the first hparams summary of a run; Lightning writes one before the first batch. The monitor
declares its columns in ``setup``, earlier; these tests read what TensorBoard itself reads.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import (
    HIDDEN,
    IN_FEATURES,
    OUT_FEATURES,
    LinearStack,
    RandomDataModule,
    hparams_session,
    make_trainer,
    read_scalars,
    requires_lightning,
)

from lightning_flops import FlopsMonitor

MODULE_HPARAMS = {"in_features": IN_FEATURES, "hidden": HIDDEN, "out": OUT_FEATURES, "lr": 0.1}
DATAMODULE_HPARAMS = {"batch_size": 4, "samples": 64, "seed": 0}
TORCH_MACS = IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES  # per sample


def _fit(tmp_path: Path, default_hp_metric: bool = True, autolog: bool = True) -> Path:
    logger = TensorBoardLogger(str(tmp_path), default_hp_metric=default_hp_metric)
    options = {} if autolog else {"enable_autolog_hparams": False}  # the Trainer argument exists from lightning 2.6
    trainer = make_trainer(tmp_path, [FlopsMonitor()], logger=logger, **options)
    trainer.fit(LinearStack(), RandomDataModule())
    return Path(trainer.log_dir)


SETTINGS = [
    pytest.param(True, True, id="default"),
    pytest.param(False, True, id="default_hp_metric_off"),
    pytest.param(
        True, False, id="autolog_hparams_off", marks=requires_lightning("2.6", "Trainer(enable_autolog_hparams=...)")
    ),
]


@pytest.mark.parametrize(("default_hp_metric", "autolog"), SETTINGS)
def test_hparams_columns_list_every_compute_metric(tmp_path: Path, default_hp_metric: bool, autolog: bool) -> None:
    log_dir = _fit(tmp_path, default_hp_metric, autolog)
    columns, _ = hparams_session(log_dir)
    compute = {key for key in read_scalars(log_dir) if key.startswith("compute/")}
    # 3 counters x (macs, flops) + 2 params + 3 pairs x (gap, core gap) + flagged + step + active params, all and
    # per token (no tokens)
    assert len(compute) == 18
    assert compute <= set(columns)


@pytest.mark.parametrize(("default_hp_metric", "autolog"), SETTINGS)
def test_hparams_row_holds_module_and_datamodule_hparams(
    tmp_path: Path, default_hp_metric: bool, autolog: bool
) -> None:
    _, values = hparams_session(_fit(tmp_path, default_hp_metric, autolog))
    assert values == {**MODULE_HPARAMS, **DATAMODULE_HPARAMS}


@pytest.mark.parametrize(("default_hp_metric", "autolog", "expected"), [(True, True, True), (False, True, False)])
def test_hp_metric_column_follows_default_hp_metric(
    tmp_path: Path, default_hp_metric: bool, autolog: bool, expected: bool
) -> None:
    columns, _ = hparams_session(_fit(tmp_path, default_hp_metric, autolog))
    assert ("hp_metric" in columns) is expected


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait_for_sessions(base: str, deadline: float) -> dict[str, Any]:
    """Poll until the server has read the hparams (it loads event files in the background)."""
    body = {
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "startIndex": 0,
        "sliceSize": 10,
    }
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            groups = _post(f"{base}/data/plugin/hparams/session_groups", body)
            if groups.get("sessionGroups"):
                return groups
        except OSError as err:  # not listening yet
            last = err
        time.sleep(0.5)
    raise AssertionError(f"tensorboard served no hparams session before the deadline (last error: {last})")


@pytest.mark.slow
def test_live_tensorboard_serves_compute_columns_and_values_in_the_module_row(tmp_path: Path) -> None:
    log_dir = _fit(tmp_path / "logs")
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir.parent), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--reload_interval", "1"]  # loopback only
    server = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        groups = _wait_for_sessions(base, time.monotonic() + 60)
        experiment = _post(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    columns = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"compute/torch/macs", "compute/params/total", "compute/flagged", "hp_metric"} <= columns
    assert len(groups["sessionGroups"]) == 1
    session = groups["sessionGroups"][0]
    assert session["hparams"]["hidden"] == HIDDEN and session["hparams"]["batch_size"] == 4
    values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
    assert values["compute/torch/macs"] == TORCH_MACS
    assert values["compute/params/total"] == IN_FEATURES * HIDDEN + HIDDEN + HIDDEN * OUT_FEATURES + OUT_FEATURES
