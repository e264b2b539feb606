"""``lightning_flops._meta_kernels``: each shape-only meta kernel gives what torch's own meta kernel gives (shape,
strides, dtype, device of every output) and takes its short path for plain inputs; anything else goes to torch's
kernel, errors included. Counts on meta do not change with them (``tests/test_compat.py``, the model tests)."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from lightning_flops._compat import META_CONV_TRACING, fast_meta_kernels, fast_meta_kernels_active, torch_meta_kernel
from lightning_flops._meta_kernels import SHAPE_ONLY_KERNELS

pytestmark = pytest.mark.skipif(not META_CONV_TRACING, reason="the meta-kernel shims are checked on torch >= 2.13")

aten = torch.ops.aten
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


def overload(name: str) -> Any:
    packet, _, which = name.partition(".")
    return getattr(getattr(aten, packet), which)


def described(out: Any) -> Any:
    """What must agree: shape, strides, dtype and device of every tensor of an output (``None`` kept)."""
    if isinstance(out, (tuple, list)):
        return [described(o) for o in out]
    if out is None:
        return None
    return (tuple(out.shape), out.stride(), out.dtype, out.device.type)


class Spy:
    """torch's own meta kernel, counting the calls our kernel hands to it."""

    def __init__(self, name: str) -> None:
        self.kernel = torch_meta_kernel(overload(name))
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.kernel(*args, **kwargs)


def ours(name: str) -> tuple[Callable[..., Any], Spy]:
    spy = Spy(name)
    return SHAPE_ONLY_KERNELS[name](spy), spy


def test_every_listed_operator_has_a_python_meta_kernel_in_torch() -> None:
    """A kernel is listed only where torch runs Python on meta (elsewhere its C++ meta kernel is already fast)."""
    assert [name for name in SHAPE_ONLY_KERNELS if torch_meta_kernel(overload(name)) is None] == []


# (args, kwargs) builders per elementwise operator; each is tried with every case of ELEMENTWISE_OPERANDS
UNARY = [
    "neg.default", "exp.default", "log.default", "sqrt.default", "rsqrt.default", "reciprocal.default",
    "abs.default", "sin.default", "cos.default", "tanh.default", "sigmoid.default", "silu.default", "relu.default",
    "erf.default", "hardswish.default", "hardsigmoid.default", "mish.default",
]  # fmt: skip
BINARY = [
    "add.Tensor", "sub.Tensor", "mul.Tensor", "div.Tensor", "pow.Tensor_Tensor", "maximum.default",
    "minimum.default", "gelu_backward.default", "sigmoid_backward.default",
    "tanh_backward.default", "gt.Tensor", "lt.Tensor", "ge.Tensor", "le.Tensor", "eq.Tensor", "ne.Tensor",
]  # fmt: skip
WITH_SCALARS: dict[str, Callable[[torch.Tensor], tuple[tuple, dict]]] = {
    "add.Scalar": lambda x: ((x, 2.5), {"alpha": 2}),
    "sub.Scalar": lambda x: ((x, 3), {}),
    "rsub.Scalar": lambda x: ((x, 1.0), {}),
    "mul.Scalar": lambda x: ((x, 0.125), {}),
    "div.Scalar": lambda x: ((x, 8), {}),
    "pow.Tensor_Scalar": lambda x: ((x, 3), {}),
    "gelu.default": lambda x: ((x,), {"approximate": "tanh"}),
    "hardtanh.default": lambda x: ((x, -1.0, 1.0), {}),
    "clamp.default": lambda x: ((x, None, 6.0), {}),
    "leaky_relu.default": lambda x: ((x, 0.2), {}),
    "elu.default": lambda x: ((x, 1.0, 1.0, 1.0), {}),
    "softplus.default": lambda x: ((x, 1.0, 20.0), {}),
    "threshold_backward.default": lambda x: ((x, x, 0.0), {}),
    **{f"{op}.Scalar": (lambda x: ((x, 0.5), {})) for op in ("gt", "lt", "ge", "le", "eq", "ne")},
}
# second operands for the binary ones: same shape, broadcasting, 0-dim on meta, a wrapped CPU number
SECOND_OPERANDS: dict[str, Callable[[torch.Tensor], Any]] = {
    "same_shape": lambda x: meta(*x.shape, dtype=x.dtype),
    "row": lambda x: meta(x.shape[-1], dtype=x.dtype),
    "column": lambda x: meta(*x.shape[:-1], 1, dtype=x.dtype),
    "zero_dim_meta_float64": lambda x: meta(dtype=torch.float64),
    "zero_dim_cpu_int": lambda x: torch.tensor(3),
}


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", UNARY)
def test_unary_elementwise_kernels_match_torch(name: str, dtype: torch.dtype) -> None:
    kernel, spy = ours(name)
    x = meta(4, 6, 8, dtype=dtype)
    assert described(kernel(x)) == described(overload(name)(x))
    assert spy.calls == 0


@pytest.mark.parametrize("second", SECOND_OPERANDS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", BINARY)
def test_binary_elementwise_kernels_match_torch(name: str, dtype: torch.dtype, second: str) -> None:
    kernel, spy = ours(name)
    x = meta(4, 6, 8, dtype=dtype)
    y = SECOND_OPERANDS[second](x)
    for args in ((x, y), (y, x)):
        assert described(kernel(*args)) == described(overload(name)(*args)), args
    assert spy.calls == 0


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("name", WITH_SCALARS)
def test_elementwise_kernels_with_scalars_match_torch(name: str, dtype: torch.dtype) -> None:
    kernel, spy = ours(name)
    args, kwargs = WITH_SCALARS[name](meta(2, 3, 5, dtype=dtype))
    assert described(kernel(*args, **kwargs)) == described(overload(name)(*args, **kwargs))
    assert spy.calls == 0


def test_every_elementwise_kernel_is_tested() -> None:
    from lightning_flops._meta_kernels import _SAME_DTYPE, _TO_BOOL

    assert set(_SAME_DTYPE) | set(_TO_BOOL) == set(UNARY) | set(BINARY) | set(WITH_SCALARS)


UNUSUAL = {
    "transposed": lambda: (meta(8, 6).t(), meta(6, 8)),
    "mixed_dtypes": lambda: (meta(6, 8), meta(6, 8, dtype=torch.bfloat16)),
    "integers": lambda: (meta(6, 8, dtype=torch.int64), meta(6, 8, dtype=torch.int64)),
    "empty": lambda: (meta(0, 8), meta(0, 8)),
    "complex": lambda: (meta(6, 8, dtype=torch.complex64), meta(6, 8, dtype=torch.complex64)),
    "channels_last": lambda: (meta(2, 3, 4, 5).to(memory_format=torch.channels_last),) * 2,
    "zero_dim_of_two_dtypes": lambda: (meta(), meta(dtype=torch.float64)),
}


@pytest.mark.parametrize("case", UNUSUAL)
@pytest.mark.parametrize("name", ["add.Tensor", "mul.Tensor", "eq.Tensor"])
def test_unusual_operands_go_to_torchs_kernel(name: str, case: str) -> None:
    kernel, spy = ours(name)
    args = UNUSUAL[case]()
    assert described(kernel(*args)) == described(overload(name)(*args))
    assert spy.calls == 1


@pytest.mark.parametrize("name", ["add.Tensor", "where.self", "cat.default", "native_layer_norm.default"])
def test_bad_shapes_raise_what_torch_raises(name: str) -> None:
    args = {
        "add.Tensor": (meta(4, 6), meta(5)),
        "where.self": (meta(4, 6, dtype=torch.bool), meta(4, 6), meta(3, 1)),
        "cat.default": ([meta(4, 6), meta(5, 7)], 0),
        "native_layer_norm.default": (meta(4, 6), [5], None, None, 1e-5),
    }[name]
    with pytest.raises(RuntimeError) as expected:
        overload(name)(*args)
    with fast_meta_kernels(), pytest.raises(RuntimeError) as got:
        overload(name)(*args)
    assert str(got.value) == str(expected.value)


def _structured_cases(dtype: torch.dtype) -> dict[str, tuple[str, tuple, dict]]:
    x4, c = meta(2, 4, 5, 5, dtype=dtype), meta(4, dtype=dtype)
    x3, w = meta(2, 3, 8, dtype=dtype), meta(8, dtype=dtype)
    stats = meta(4, dtype=torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    ln_out = aten.native_layer_norm.default(x3, [8], w, w, 1e-5)
    bn_out = aten.native_batch_norm.default(x4, c, c, c, c, True, 0.1, 1e-5)
    return {
        "where": ("where.self", (meta(3, 8, dtype=torch.bool), x3, meta(dtype=dtype)), {}),
        "where_0dim_values": ("where.self", (meta(3, 8, dtype=torch.bool), meta(dtype=dtype), meta(dtype=dtype)), {}),
        "masked_fill": ("masked_fill.Scalar", (x3, meta(3, 1, dtype=torch.bool), -1e4), {}),
        "tril": ("tril.default", (x3, 1), {}),
        "triu_bool": ("triu.default", (meta(8, 8, dtype=torch.bool),), {}),
        "safe_softmax": ("_safe_softmax.default", (x3, -1), {}),
        "mean_keepdim": ("mean.dim", (x3, [-1], True), {}),
        "mean": ("mean.dim", (x4, [2, 3]), {}),
        "sum": ("sum.dim_IntList", (x4, [0, -1]), {}),
        "cat": ("cat.default", ([x3, meta(2, 5, 8, dtype=dtype)], 1), {}),
        "cat_last": ("cat.default", ([x3, x3], -1), {}),
        "addmm": ("addmm.default", (w, meta(5, 6, dtype=dtype), meta(6, 8, dtype=dtype)), {"beta": 0.5}),
        "batch_norm_eval": ("native_batch_norm.default", (x4, c, c, c, c, False, 0.1, 1e-5), {}),
        "batch_norm_train": ("native_batch_norm.default", (x4, c, c, c, c, True, 0.1, 1e-5), {}),
        "batch_norm_no_affine": ("native_batch_norm.default", (x4, None, None, c, c, False, 0.1, 1e-5), {}),
        "batch_norm_float_stats": ("native_batch_norm.default", (x4, c, c, stats, stats, False, 0.1, 1e-5), {}),
        "legit": ("_native_batch_norm_legit.default", (x4, c, c, c, c, True, 0.1, 1e-5), {}),
        "legit_no_stats": ("_native_batch_norm_legit.no_stats", (x4, c, c, True, 0.1, 1e-5), {}),
        "legit_no_training": ("_native_batch_norm_legit_no_training.default", (x4, c, c, c, c, 0.1, 1e-5), {}),
        "layer_norm": ("native_layer_norm.default", (x3, [8], w, w, 1e-5), {}),
        "layer_norm_2d": ("native_layer_norm.default", (x3, [3, 8], None, None, 1e-5), {}),
        "layer_norm_backward": (
            "native_layer_norm_backward.default", (x3, x3, [8], ln_out[1], ln_out[2], w, w, [True, True, True]), {}
        ),
        "layer_norm_backward_input_only": (
            "native_layer_norm_backward.default", (x3, x3, [8], ln_out[1], ln_out[2], w, w, [True, False, False]), {}
        ),
        "layer_norm_backward_no_weight": (
            "native_layer_norm_backward.default", (x3, x3, [8], ln_out[1], ln_out[2], None, None, [True] * 3), {}
        ),
        "batch_norm_backward": (
            "native_batch_norm_backward.default",
            (x4, x4, c, c, c, bn_out[1], bn_out[2], True, 1e-5, [True, True, True]), {},
        ),
        "batch_norm_backward_eval": (
            "native_batch_norm_backward.default",
            (x4, x4, c, c, c, bn_out[1], bn_out[2], False, 1e-5, [True, False, True]), {},
        ),
        "softmax_backward": ("_softmax_backward_data.default", (x3, x3, -1, dtype), {}),
    }  # fmt: skip


STRUCTURED = list(_structured_cases(torch.float32))


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("case", STRUCTURED)
def test_structured_kernels_match_torch(case: str, dtype: torch.dtype) -> None:
    name, args, kwargs = _structured_cases(dtype)[case]
    kernel, spy = ours(name)
    assert described(kernel(*args, **kwargs)) == described(overload(name)(*args, **kwargs))
    assert spy.calls == 0


def test_every_structured_kernel_is_tested() -> None:
    from lightning_flops._meta_kernels import _SAME_DTYPE, _TO_BOOL

    tested = {name for name, _, _ in _structured_cases(torch.float32).values()}
    assert set(SHAPE_ONLY_KERNELS) - set(_SAME_DTYPE) - set(_TO_BOOL) == tested


def test_channels_last_batch_norm_goes_to_torchs_kernel() -> None:
    kernel, spy = ours("native_batch_norm.default")
    x, c = meta(2, 4, 5, 5).to(memory_format=torch.channels_last), meta(4)
    args = (x, c, c, c, c, False, 0.1, 1e-5)
    assert described(kernel(*args)) == described(aten.native_batch_norm.default(*args))
    assert spy.calls == 1


def test_a_model_on_meta_gives_the_same_outputs_and_counts_with_the_kernels() -> None:
    """Whole forward and backward passes through a conv/norm/softmax model: every output and gradient agrees."""
    import lightning_flops as lf
    from lightning_flops.train_step import train_step_flops

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(2),
        torch.nn.LayerNorm(16), torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Softmax(-1), torch.nn.Linear(16, 3),
    )  # fmt: skip
    x = torch.randn(2, 3, 4, 4)
    meta_model = copy.deepcopy(model).to("meta")
    meta_x = torch.empty(2, 3, 4, 4, device="meta", requires_grad=True)

    def run() -> Any:
        out = meta_model(meta_x)
        grads = torch.autograd.grad(out.sum(), [meta_x, *meta_model.parameters()])
        return described([out, *grads])

    expected = run()
    with fast_meta_kernels():
        assert run() == expected
    report = lf.profile_model(model, x, device="meta", strict=True)
    real = lf.profile_model(model, x, device="model", strict=True)
    assert {n: r.macs for n, r in report.counters.items()} == {n: r.macs for n, r in real.counters.items()}
    assert report.counters["torch"].macs > 0
    model.train()
    assert train_step_flops(model, x) > 0


class Probe(torch.nn.Module):
    """Records, on every call, whether the shape-only kernels are active on its thread and which hooks it holds."""

    seen: list[tuple[bool, int]] = []
    threads: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ours = fast_meta_kernels_active()
        hooks = len(self._forward_pre_hooks) + len(self._forward_hooks) + len(self.norm._forward_pre_hooks)
        Probe.seen.append((x.device.type == "meta" and ours, hooks))
        Probe.threads.append(threading.current_thread().name)
        return self.norm(x)


def test_every_meta_count_runs_with_the_shape_only_kernels_and_no_tracking_hook_per_module() -> None:
    """profile_model's three counters and train_step_flops count on meta under the kernels (fvcore's JIT trace on a
    thread of its own, where they are carried); module tracking uses
    process-wide hooks, so the modules themselves hold only the counters' own (thop's counting hooks, fvcore's scope
    hooks) and never the two tracking hooks per module that the torch counter would add."""
    import lightning_flops as lf
    from lightning_flops.train_step import train_step_flops

    Probe.seen.clear()
    Probe.threads.clear()
    report = lf.profile_model(Probe(), torch.randn(3, 4), strict=True)
    assert {r.device for r in report.counters.values()} == {"meta"}
    assert report.counters["torch"].macs == 0 and report.params.total == 8  # a norm only: no MACs; weight + bias
    assert [ours for ours, _ in Probe.seen] == [True] * len(Probe.seen) and len(Probe.seen) >= 3
    assert "lightning-flops-trace" in Probe.threads  # fvcore's trace thread ran it, under the kernels too
    torch_call = Probe.seen[0]  # the torch counter runs first
    assert torch_call[1] == 0
    Probe.seen.clear()
    model = Probe().train()
    assert train_step_flops(model, torch.randn(3, 4)) == 0
    assert [ours for ours, _ in Probe.seen] == [True]


def test_the_kernels_answer_meta_calls_only() -> None:
    """A dispatch mode sees every call of its thread: one on CPU tensors only (thop's arithmetic on its counters,
    ``torch.DoubleTensor([...]) / ...``) runs torch's kernel with its data; one with a meta operand gets ours."""
    import lightning_flops as lf

    cpu = torch.tensor([6.0, 8.0], dtype=torch.float64)
    with fast_meta_kernels():
        assert (cpu + 1).tolist() == [7.0, 9.0]
        assert int(torch.prod(cpu / torch.tensor([2.0, 4.0], dtype=torch.float64)) + 1) == 7
        assert (torch.tensor(2.0) * meta(3)).device.type == "meta"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    report = lf.profile_model(model, torch.randn(2, 3, 8, 8), counters=("thop",), strict=True)
    assert (report.counters["thop"].device, report.counters["thop"].device_note) == ("meta", None)
