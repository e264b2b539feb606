"""profile_model on a model bigger than memory: a 1.08B-parameter TransformerLM built on the meta device.

Its fp32 weights would take 4.3 GB; on meta they take none, and counting must not materialise them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lightning_flops as lf
from examples.models import transformer_lm

LAYERS, D, FFN, VOCAB, MAX_SEQ = 4, 4096, 4 * 4096, 32000, 2048
BATCH, SEQ = 1, 2048
PARAMS = LAYERS * (4 * D * D + 2 * D * FFN + 2 * D) + 2 * VOCAB * D + MAX_SEQ * D + D  # blocks, embeds+head, pos, norm
LINEAR_MACS = BATCH * SEQ * (LAYERS * (4 * D * D + 2 * D * FFN) + D * VOCAB)  # qkv+out, ffn, lm head per token
ATTENTION_MACS = BATCH * LAYERS * 2 * SEQ * SEQ * D  # q k^T and p v per layer, causal mask counted in full


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.fixture(scope="module", params=[None, "meta"], ids=["device=None", "device=meta"])
def measured(request: pytest.FixtureRequest) -> tuple[lf.FlopsReport, int]:
    """The report and the peak RSS growth (bytes) during ``profile_model`` of the meta-built model."""
    with torch.device("meta"):
        model = transformer_lm(layers=LAYERS, d_model=D, heads=32, ffn=FFN, vocab=VOCAB, max_seq=MAX_SEQ)
    tokens = torch.zeros(BATCH, SEQ, dtype=torch.long)
    clear_refs = Path("/proc/self/clear_refs")
    try:
        clear_refs.write_text("5")  # resets the peak (VmHWM) to the current RSS (Linux >= 4.0)
        peak_key = "VmHWM"
    except OSError:
        peak_key = "VmRSS"  # no reset possible: compare current RSS after the call
    before = _status_kib("VmRSS")
    report = lf.profile_model(model, tokens, device=request.param)
    return report, (_status_kib(peak_key) - before) * 1024


def test_model_has_over_a_billion_parameters(measured: tuple[lf.FlopsReport, int]) -> None:
    report, _ = measured
    assert report.params.total == PARAMS == 1_075_875_840


def test_torch_macs_equal_arithmetic_on_meta(measured: tuple[lf.FlopsReport, int]) -> None:
    report, _ = measured
    torch_result = report.counters["torch"]
    assert torch_result.device == "meta"
    assert torch_result.macs == LINEAR_MACS + ATTENTION_MACS
    assert torch_result.by_operator == {"linear": LINEAR_MACS, "attention": ATTENTION_MACS}


@pytest.mark.parametrize("counter", ["thop", "fvcore"])
def test_thop_and_fvcore_count_the_linears_on_meta(measured: tuple[lf.FlopsReport, int], counter: str) -> None:
    result = measured[0].counters[counter]
    assert result.ok, result.error
    assert result.device == "meta"  # no conv: both count on the meta copy, no weight materialised
    assert result.by_operator["linear"] == LINEAR_MACS
    assert any("attention" in item.operator for item in result.uncounted)  # SDPA is a functional call both miss


def test_memory_does_not_grow_by_the_weight_size(measured: tuple[lf.FlopsReport, int]) -> None:
    _, growth = measured
    weight_bytes = PARAMS * 4  # fp32
    assert growth < weight_bytes / 20  # 215 MB: a materialised copy of any large layer group would exceed it
