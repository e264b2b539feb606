"""fvcore's number is identical whichever way it traces: on CPU as users run it, or on a meta copy through the shim.

``lightning_flops._compat.traceable_meta_convolution`` lets ``torch.jit.trace`` record convolutions on the meta
device (torch 2.13 alone raises "cond must be a bool"). Every expected value here is fvcore itself on real CPU
tensors, without the shim; the comparison covers the total, the per-module and per-operator table and the list of
unsupported operators.
"""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import nullcontext, redirect_stdout
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import SmallCNN, small_cnn_macs
from lightning_flops._compat import META_CONV_TRACING, fast_meta_kernels, traceable_meta_convolution
from tests.test_ops import ALL_OPS, Op

pytestmark = pytest.mark.skipif(not META_CONV_TRACING, reason="the meta-convolution shim is checked on torch >= 2.13")

CONV_OPS = [op for op in ALL_OPS if op.id.startswith("conv")]


class ConvNet(nn.Module):
    """Every convolution flavour in one model: 1d/2d/3d, grouped, dilated, 'same' padding, transposed, unbatched."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 6, 3, padding="same", dilation=2)
        self.c2 = nn.Conv2d(3, 8, 3, stride=2, groups=1, padding_mode="reflect", padding=1)
        self.c2g = nn.Conv2d(8, 8, 3, groups=4, bias=False)
        self.c3 = nn.Conv3d(2, 4, (1, 3, 3))
        self.t2 = nn.ConvTranspose2d(8, 4, 2, stride=2, output_padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y = self.c2g(torch.relu(self.bn(self.c2(b))))
        return self.c1(a), self.t2(y), self.c3(c), self.c1(a[0])  # the last one: an unbatched input


def conv_net_inputs() -> tuple[torch.Tensor, ...]:
    return torch.randn(2, 3, 20), torch.randn(2, 3, 16, 16), torch.randn(2, 2, 3, 8, 8)


def fvcore_tables(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str, fast: bool = False
) -> tuple[Any, ...]:
    """fvcore's total, by-module-and-operator table and unsupported ops on a copy of ``model`` on ``device``
    (``fast``: with the shape-only meta kernels that profile_model counts under)."""
    from fvcore.nn import FlopCountAnalysis

    target = copy.deepcopy(model).eval().to(device)
    shim = traceable_meta_convolution() if device == "meta" else nullcontext()
    kernels = fast_meta_kernels() if fast else nullcontext()
    with torch.no_grad(), shim, kernels, redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(target, tuple(t.to(device) for t in inputs))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return analysis.total(), analysis.by_module_and_operator(), dict(analysis.unsupported_ops())


def _as_tuple(inputs: Any) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


@pytest.mark.parametrize("op", CONV_OPS, ids=lambda o: o.id)
def test_fvcore_on_meta_counts_each_convolution_as_on_cpu(op: Op) -> None:
    model, inputs = op.build(), _as_tuple(op.inputs())
    on_cpu = fvcore_tables(model, inputs, "cpu")
    assert on_cpu[0] == op.macs  # fvcore's conv rule is the analytic count of the ops table
    assert fvcore_tables(model, inputs, "meta") == on_cpu


@pytest.mark.parametrize("fast", [False, True], ids=["torch_meta_kernels", "shape_only_meta_kernels"])
def test_fvcore_on_meta_counts_every_convolution_flavour_as_on_cpu(fast: bool) -> None:
    on_cpu = fvcore_tables(ConvNet(), conv_net_inputs(), "cpu")
    assert on_cpu[0] > 0 and on_cpu[1]["c2g"]["conv"] == 2 * 8 * 6 * 6 * 2 * 3 * 3  # batch * out * H * W * in/g * k*k
    assert fvcore_tables(ConvNet(), conv_net_inputs(), "meta", fast=fast) == on_cpu


class NormAttention(nn.Module):
    """LayerNorm, GELU, a hand-written causal attention (matmul, masked_fill, softmax), residual adds, a mean."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.norm, self.qkv, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        y = x + self.out(nn.functional.gelu(attn @ v))
        return torch.cat([y, y.mean(dim=-1, keepdim=True)], dim=-1)


@pytest.mark.parametrize("fast", [False, True], ids=["torch_meta_kernels", "shape_only_meta_kernels"])
def test_fvcore_on_meta_counts_an_attention_block_as_on_cpu(fast: bool) -> None:
    x = (torch.randn(2, 5, 16),)
    on_cpu = fvcore_tables(NormAttention(), x, "cpu")
    assert on_cpu[1]["qkv"]["linear"] == 2 * 5 * 16 * 48  # batch * tokens * in * out
    assert on_cpu[1][""]["matmul"] == 2 * (2 * 5 * 5 * 16)  # q @ k^T and attn @ v: batch * T * T * dim each
    assert fvcore_tables(NormAttention(), x, "meta", fast=fast) == on_cpu


def test_profile_model_counts_fvcore_alike_from_any_stack_depth_and_traces_on_a_fresh_stack() -> None:
    """fvcore's trace runs in a thread of its own (the tracer walks the caller's whole stack for every node it adds):
    the same number from a deep stack, as inside Trainer.fit, and grad mode carried into the thread."""
    import threading

    threads: list[tuple[str, bool]] = []

    class Recorded(NormAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            threads.append((threading.current_thread().name, torch.is_grad_enabled()))
            return super().forward(x)

    model = Recorded()
    x = torch.randn(2, 5, 16)
    expected = fvcore_tables(NormAttention(), (x,), "cpu")[0]

    def deep(n: int) -> int:
        if n:
            return deep(n - 1)
        return lf.profile_model(model, x, counters=("fvcore",), strict=True).counters["fvcore"].macs

    assert deep(0) == deep(150) == expected
    fvcore_calls = [t for t in threads if t[0] == "lightning-flops-trace"]
    assert len(fvcore_calls) == 2 and not any(grad for _, grad in fvcore_calls)


def test_profile_model_counts_fvcore_on_meta_with_the_number_fvcore_gives_on_cpu() -> None:
    x = torch.randn(4, 3, 32, 32)
    result = lf.profile_model(SmallCNN(), x, counters=("fvcore",), strict=True).counters["fvcore"]
    total, by_module, _ = fvcore_tables(SmallCNN(), (x,), "cpu")
    assert (result.device, result.sample_scale) == ("meta", 1)  # no real-device trace, no one-sample slice
    assert result.macs == total
    assert result.module_operators["features.3"]["conv"] == by_module["features.3"]["conv"] == 4 * 32 * 16 * 16 * 16 * 9
    # batch * out * H * W * in * k * k (the stride-2 conv)
    torch_macs = lf.profile_model(SmallCNN(), x, counters=("torch",)).counters["torch"].macs
    assert torch_macs == small_cnn_macs(4)


def test_the_shim_is_removed_on_exit() -> None:
    from fvcore.nn import FlopCountAnalysis

    conv, x = nn.Conv2d(3, 4, 3).to("meta"), torch.empty(1, 3, 8, 8, device="meta")
    with traceable_meta_convolution():
        pass
    with pytest.raises(TypeError, match="cond must be a bool"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        FlopCountAnalysis(conv, x).total()  # fvcore alone, as before: torch's own meta kernel is back
    assert conv(x).shape == (1, 4, 6, 6)  # and meta convolutions still run


def test_the_shim_reaches_no_other_thread() -> None:
    """A function mode of the thread that enters it: a JIT trace of a meta convolution on another thread meanwhile
    still meets torch's own meta kernel (and fails as fvcore alone fails there)."""
    import threading

    from fvcore.nn import FlopCountAnalysis

    conv, x = nn.Conv2d(3, 4, 3).to("meta"), torch.empty(1, 3, 8, 8, device="meta")
    outcome: list[str] = []

    def other() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                FlopCountAnalysis(conv, x).total()
            outcome.append("traced")
        except TypeError as err:
            outcome.append(str(err).split(".")[0])

    with traceable_meta_convolution():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            here = FlopCountAnalysis(conv, x).total()
    assert outcome == ["cond must be a bool, but got a Tensor"]
    assert here == 4 * 6 * 6 * 3 * 3 * 3  # out channels*H*W*in channels*k*k, batch 1
