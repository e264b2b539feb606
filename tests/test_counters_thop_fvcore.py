"""thop's and fvcore's numbers are what those libraries really return, and their blind spots land in ``uncounted``.

Each expected value comes from calling ``thop.profile`` / ``fvcore.nn.FlopCountAnalysis`` directly on a fresh copy
of the module (in eval mode, under ``no_grad``, as all counters run by default) -- never from the code under test.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from contextlib import redirect_stdout
from importlib import metadata
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import SmallCNN, TinyAttention, small_cnn_macs
from lightning_flops._compat import traceable_meta_convolution
from tests.test_ops import ALL_OPS, Op

OPS_BY_ID = {op.id: op for op in ALL_OPS}
# the rows of research/ops_table.md (the stacked bidirectional LSTM is ours, checked for torch only)
TABLE_OPS = [op for op in ALL_OPS if op.id != "lstm_2_layers_bidirectional"]


def _thop_is_mit() -> bool:
    try:
        metadata.version("ultralytics-thop")
    except metadata.PackageNotFoundError:
        return True
    return False


mit_thop_only = pytest.mark.skipif(not _thop_is_mit(), reason="blind spots and rules of the MIT thop package")


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def thop_direct(model: nn.Module, inputs: Any) -> tuple[float, dict[str, Any]]:
    """``thop.profile`` on a copy of ``model``: (total MACs, layer info)."""
    import thop

    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total, _params, layers = thop.profile(
            copy.deepcopy(model), inputs=_as_tuple(inputs), verbose=False, ret_layer_info=True
        )
    return total, layers


def fvcore_direct(model: nn.Module, inputs: Any, device: str = "cpu") -> Any:
    """``FlopCountAnalysis`` of a copy of ``model`` on ``device``, in eval mode under ``no_grad``, already evaluated."""
    from fvcore.nn import FlopCountAnalysis

    target = copy.deepcopy(model).eval().to(device)
    # on meta, convolutions trace only through the shim the adapter uses (tests/test_fvcore_meta_tracing.py checks
    # that it counts exactly what fvcore counts on CPU)
    shim = traceable_meta_convolution() if device == "meta" else contextlib.nullcontext()
    with torch.no_grad(), shim, redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(target, tuple(t.to(device) for t in _as_tuple(inputs)))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.total()  # runs the trace now, under no_grad
    return analysis


def _profile(model: nn.Module, inputs: Any, counter: str, device: str | None = None) -> lf.CounterResult:
    report = lf.profile_model(model, inputs, counters=(counter,), device=device, strict=True)
    return report.counters[counter]


@pytest.mark.parametrize("op", TABLE_OPS, ids=lambda o: o.id)
def test_thop_macs_equal_thop_profile(op: Op) -> None:
    model, inputs = op.build(), op.inputs()
    expected, _ = thop_direct(model, inputs)
    result = _profile(model, inputs, "thop")
    assert result.macs == round(expected)
    assert result.flops == 2 * round(expected)


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize("op", TABLE_OPS, ids=lambda o: o.id)
def test_fvcore_macs_equal_flop_count_analysis(op: Op, device: str | None) -> None:
    # fvcore counts what runs: compare on the device the adapter reports it counted on (a meta copy by default)
    model, inputs = op.build(), op.inputs()
    result = _profile(model, inputs, "fvcore", device=device)
    expected = fvcore_direct(model, inputs, result.device).total()
    assert result.macs == expected
    assert result.flops == 2 * expected


@mit_thop_only
@pytest.mark.parametrize(
    ("op_id", "label"),
    [
        ("torch_matmul_4d", "matmul"),
        ("matmul_operator", "matmul"),
        ("tensor_matmul_method", "matmul"),
        ("matmul_3d_by_2d", "matmul"),
        ("bmm", "matmul"),
        ("einsum_scores", "einsum"),
        ("functional_linear", "linear"),
        ("sdpa", "attention"),
        ("mha_self_attention", "attention"),
        ("mha_cross_attention", "attention"),
    ],
)
def test_thop_lists_functional_calls_it_misses_as_uncounted(op_id: str, label: str) -> None:
    op = OPS_BY_ID[op_id]
    result = _profile(op.build(), op.inputs(), "thop")
    assert result.macs == 0  # what MIT thop says: no rule for functional calls
    assert any(u.operator == label and "functional call" in u.reason and u.calls >= 1 for u in result.uncounted), (
        result.uncounted
    )


@pytest.mark.parametrize("op_id", ["linear_bias", "conv2d_no_bias", "lstm", "gru"])
def test_thop_lists_nothing_uncounted_for_modules_it_has_rules_for(op_id: str) -> None:
    op = OPS_BY_ID[op_id]
    assert _profile(op.build(), op.inputs(), "thop").uncounted == ()


@pytest.mark.parametrize(
    ("op_id", "device", "kernel"),
    [
        ("sdpa", None, "scaled_dot_product_attention"),
        ("sdpa", "model", "scaled_dot_product_attention"),
        ("lstm", None, "lstm"),
        ("lstm", "model", "lstm"),
        ("gru", "model", "gru"),
        ("mha_self_attention", "model", "_native_multi_head_attention"),  # the CPU fast path under no_grad
    ],
)
def test_fvcore_lists_kernels_it_misses_as_uncounted(op_id: str, device: str | None, kernel: str) -> None:
    op = OPS_BY_ID[op_id]
    result = _profile(op.build(), op.inputs(), "fvcore", device=device)
    assert result.macs == 0
    assert any(u.operator == kernel and u.reason.startswith("unsupported by fvcore") for u in result.uncounted), (
        result.uncounted
    )


def test_fvcore_counts_mha_fast_path_as_zero_in_place_but_in_full_on_meta() -> None:
    # nn.MultiheadAttention takes the fused CPU kernel under no_grad (fvcore: unsupported, 0) but decomposes on meta
    op = OPS_BY_ID["mha_self_attention"]
    model, inputs = op.build(), op.inputs()
    in_place = _profile(model, inputs, "fvcore", device="model")
    on_meta = _profile(model, inputs, "fvcore", device="meta")
    assert (in_place.macs, on_meta.macs) == (0, op.macs)
    assert any(u.operator == "_native_multi_head_attention" for u in in_place.uncounted)


@mit_thop_only
def test_thop_counts_conv_transpose_four_times_the_analytic_macs() -> None:
    # What MIT thop says: output elements * in_ch * k * k, i.e. stride**2 = 4 times the real products.
    op = OPS_BY_ID["conv_transpose2d_no_bias"]
    result = _profile(op.build(), op.inputs(), "thop")
    assert result.macs == (2 * 8 * 32 * 32) * 16 * 4 * 4  # output elements * in_ch * k * k
    assert result.macs == 4 * op.macs


def test_report_names_the_installed_thop_variant() -> None:
    report = lf.profile_model(nn.Linear(4, 4), torch.randn(2, 4), counters=("thop",))
    expected = "thop (MIT)" if _thop_is_mit() else "ultralytics-thop (AGPL fork)"
    assert report.versions["thop_variant"] == expected


# ------------------------------------------------------------------------------------ by_module / by_operator
def _models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    return [
        ("small_cnn", SmallCNN(), torch.randn(2, 3, 32, 32)),
        ("tiny_attention", TinyAttention(), torch.randint(0, 100, (2, 16))),
    ]


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
@pytest.mark.parametrize(("name", "model", "inputs"), _models(), ids=lambda v: v if isinstance(v, str) else "")
def test_by_module_names_are_named_modules_names(counter: str, name: str, model: nn.Module, inputs: Any) -> None:
    result = _profile(model, inputs, counter)
    assert set(result.by_module) <= {n for n, _ in model.named_modules()}
    assert result.by_module[""] == result.macs
    assert sum(result.by_operator.values()) == result.macs


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
def test_every_counter_books_small_cnn_convs_and_head_to_their_modules(counter: str) -> None:
    result = _profile(SmallCNN(), torch.randn(2, 3, 32, 32), counter)
    assert result.by_module["features.0"] == 2 * 16 * 32 * 32 * 3 * 3 * 3  # batch * out * H * W * in * k * k
    assert result.by_module["features.3"] == 2 * 32 * 16 * 16 * 16 * 3 * 3  # stride 2: 16 x 16 output
    assert result.by_module["fc"] == 2 * 32 * 10
    assert result.by_operator["conv"] + result.by_operator["linear"] == small_cnn_macs(2)


def test_thop_by_module_equals_thop_layer_info() -> None:
    model, inputs = SmallCNN(), torch.randn(2, 3, 32, 32)
    _, layers = thop_direct(model, inputs)
    result = _profile(model, inputs, "thop")

    def leaves(tree: dict[str, Any], prefix: str) -> dict[str, int]:
        out = {}
        for child, (ops, _params, sub) in tree.items():
            out.update(leaves(sub, f"{prefix}{child}.") if sub else {f"{prefix}{child}": round(ops)})
        return out

    expected = leaves(layers, "")
    leaf_names = [n for n, m in model.named_modules() if n and next(m.children(), None) is None]
    assert sorted(expected) == sorted(leaf_names)
    assert {n: result.by_module.get(n, 0) for n in leaf_names} == expected


def test_fvcore_by_module_equals_flop_count_analysis_by_module() -> None:
    model, inputs = TinyAttention(), torch.randint(0, 100, (2, 16))
    expected = {n: v for n, v in fvcore_direct(model, inputs).by_module().items() if v}
    result = _profile(model, inputs, "fvcore")
    assert {n: v for n, v in result.by_module.items() if v} == expected


def test_fvcore_by_operator_keeps_einsum_separate_from_linear() -> None:
    model, inputs = TinyAttention(), torch.randint(0, 100, (2, 16))
    by_operator = fvcore_direct(model, inputs).by_operator()
    result = _profile(model, inputs, "fvcore")
    assert result.by_operator["einsum"] == by_operator["einsum"]
    assert result.by_operator["linear"] == by_operator["linear"]


def test_the_agpl_fork_is_detected_from_package_metadata_and_its_blind_spot_list_adapted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Simulated: both packages install the same `thop` folder; only the distribution name tells them apart."""
    import lightning_flops.counters.thop_hooks as thop_hooks

    real_version = metadata.version

    def fork_installed(name: str) -> str:
        if name == "ultralytics-thop":
            return "2.2.3"
        if name == "thop":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    mit = lf.profile_model(TinyAttention(), torch.randint(0, 100, (2, 8)), counters=("thop",))
    monkeypatch.setattr(thop_hooks.metadata, "version", fork_installed)
    fork = lf.profile_model(TinyAttention(), torch.randint(0, 100, (2, 8)), counters=("thop",))
    assert thop_hooks.thop_variant() == ("ultralytics", "2.2.3")
    assert fork.versions["thop_variant"] == "ultralytics-thop (AGPL fork)" and fork.versions["thop"] == "2.2.3"
    assert any(
        (u.operator, u.module) == ("einsum", "block.attn") and "functional call" in u.reason
        for u in mit.counters["thop"].uncounted
    )
    assert not any("functional call" in u.reason for u in fork.counters["thop"].uncounted)  # the fork counts those
