"""``on_gap``: thop does not count einsum attention, so TinyAttention's thop count falls short of torch's."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from lit_helpers import make_trainer, read_scalars

from examples.lit_models import LitTinyAttention, SyntheticTokens
from examples.models import tiny_attention_macs
from lightning_flops import FlopsGapError, FlopsMonitor

SEQ, DIM = 8, 32
# thop misses the two einsums (q k^T and p v): 2 * seq^2 * dim MACs per sample of tiny_attention_macs(1, seq)
THOP_CORE_GAP = 2 * SEQ * SEQ * DIM / tiny_attention_macs(1, SEQ, dim=DIM)  # about 4.0%


def _fit(tmp_path: Path, **monitor: object) -> Path:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("thop", "torch"), **monitor)])
    trainer.fit(LitTinyAttention(dim=DIM), SyntheticTokens(batch_size=2, seq=SEQ))
    return Path(trainer.log_dir)


def _gap_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "counters disagree" in str(w.message)]


def test_gap_above_limit_warns_once_naming_counters_percent_module_and_operator(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path)
    messages = _gap_warnings(record)
    assert len(messages) == 1
    message = messages[0]
    assert "thop vs torch" in message
    assert f"{THOP_CORE_GAP:.2%}" in message
    assert "`model.block.attn`" in message
    assert "einsum" in message


def test_logged_core_gap_is_the_missing_einsum_share(tmp_path: Path) -> None:
    scalars = read_scalars(_fit(tmp_path, on_gap="ignore"))
    assert scalars["compute/core_gap/thop_vs_torch"] == pytest.approx(THOP_CORE_GAP, rel=1e-6)
    assert scalars["compute/flagged"] == 1.0


def test_on_gap_raise_raises_gap_error_after_logging_flagged(tmp_path: Path) -> None:
    with pytest.raises(FlopsGapError, match="thop vs torch"):
        _fit(tmp_path, on_gap="raise")
    assert read_scalars(next(tmp_path.rglob("version_0")))["compute/flagged"] == 1.0


def test_on_gap_ignore_does_not_warn(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, on_gap="ignore")
    assert _gap_warnings(record) == []


def test_gap_below_the_limit_is_not_flagged(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        log_dir = _fit(tmp_path, limit=0.05, on_gap="raise")  # 5% > the 4% einsum share: no flag, no raise
    assert _gap_warnings(record) == []
    assert read_scalars(log_dir)["compute/flagged"] == 0.0
