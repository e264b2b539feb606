"""FlopsMonitor(timing=N) in a real fit: the time scalars, the "where the time goes" text and the image land in the
event file; the fit itself is bit-identical to one without the callback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_flops import FlopsMonitor
from lightning_flops.errors import FlopsConfigError
from tests.lit_helpers import (
    LinearStack,
    RandomDataModule,
    _accumulator,
    assert_same_weights_and_optimizer,
    linear_stack_macs,
    make_trainer,
    read_scalars,
)

BATCH = 4  # RandomDataModule's default batch size


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("timed")
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), timing=2)])
    trainer.fit(LinearStack(), RandomDataModule())
    return Path(trainer.log_dir)


def test_fit_logs_the_time_scalars(timed_run: Path) -> None:
    scalars = read_scalars(timed_run)
    data = json.loads((timed_run / "flops_report.json").read_text())
    timing = data["timing"]
    assert timing["macs"] == linear_stack_macs(BATCH)
    assert scalars["compute/time/forward_seconds"] == pytest.approx(timing["forward_seconds"], rel=1e-6)
    assert scalars["compute/time/zero_mac_share"] == pytest.approx(timing["zero_mac_share"], rel=1e-6)
    achieved = 2 * linear_stack_macs(BATCH) / timing["forward_seconds"]  # 2 * MACs / seconds
    assert scalars["compute/time/achieved_flops_per_second"] == pytest.approx(achieved, rel=1e-6)
    assert "compute/time/mfu" not in scalars  # no CPU in Lightning's peak table


def test_fit_writes_where_the_time_goes_as_text_and_image(timed_run: Path) -> None:
    accumulator = _accumulator(timed_run)
    text = accumulator.Tensors("compute/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "Where the time goes" in text and "| top operators | time share | MAC share | achieved FLOP/s |" in text
    assert "| linear |" in text
    images = accumulator.Tags()["images"]
    assert images == ["compute/time/where_the_time_goes"]
    image = accumulator.Images(images[0])[0]
    assert image.width > 100 and image.height > 100


def test_time_keys_are_hparams_columns(timed_run: Path) -> None:
    from tests.lit_helpers import hparams_session

    columns, _ = hparams_session(timed_run)
    assert {"compute/time/forward_seconds", "compute/time/zero_mac_share"} <= set(columns)


def test_timed_fit_is_bit_identical_to_a_fit_without_the_callback(tmp_path: Path) -> None:
    fits = []
    for callbacks in ([FlopsMonitor(counters=("torch",), timing=2)], []):
        seed_everything(7, workers=True)
        module = LinearStack()
        trainer = make_trainer(tmp_path, callbacks, max_steps=3, logger=False)
        trainer.fit(module, RandomDataModule())
        fits.append((module, trainer))
    (timed, timed_trainer), (plain, plain_trainer) = fits
    assert_same_weights_and_optimizer(timed, timed_trainer, plain, plain_trainer)


def test_a_resumed_fit_asking_for_timing_does_not_reuse_a_report_without_it(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",)), checkpoint], enable_checkpointing=True)
    first.fit(LinearStack(), RandomDataModule())
    assert json.loads((Path(first.log_dir) / "flops_report.json").read_text())["timing"] is None
    logger = TensorBoardLogger(str(tmp_path / "resumed"))
    second = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), timing=1)], max_steps=4, logger=logger)
    second.fit(LinearStack(), RandomDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    timing = json.loads((Path(second.log_dir) / "flops_report.json").read_text())["timing"]
    assert timing is not None and timing["macs"] == linear_stack_macs(BATCH)


def test_a_bad_timing_value_is_refused_at_construction() -> None:
    with pytest.raises(FlopsConfigError, match="`timing` must be an int >= 0"):
        FlopsMonitor(timing=-2)


_PROFILED_FIT = """
import json, sys
from pathlib import Path
import torch
from lightning_flops import FlopsMonitor
from tests.lit_helpers import LinearStack, RandomDataModule, make_trainer

trainer = make_trainer(Path(sys.argv[1]), [FlopsMonitor(counters=("torch",), timing=1)], max_steps=2)
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    trainer.fit(LinearStack(), RandomDataModule())
timing = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())["timing"]
print(json.dumps({"events": len(prof.events()), "note": timing["note"], "operators": len(timing["operators"])}))
"""


@pytest.mark.slow  # a child process: Lightning imported afresh
def test_a_profiler_around_the_fit_is_left_alone(tmp_path: Path) -> None:
    """The timing runs on the monitor's own thread; a second torch.profiler started there while the training thread
    runs one ends that session, and reading it then crashed the process (exit -11): run in a child process."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _PROFILED_FIT, str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["operators"] == 0 and "another torch.profiler" in result["note"]
    assert result["events"] > 0  # the user's profiler kept its events


def test_the_example_refuses_a_negative_timing(capsys: pytest.CaptureFixture[str]) -> None:
    from examples import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--timing", "-1"])
    assert exit_info.value.code == 2 and "--timing must be >= 0" in capsys.readouterr().err
