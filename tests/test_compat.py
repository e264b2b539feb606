"""The shims of ``lightning_flops._compat`` give what torch gives, and are gone when they exit."""

from __future__ import annotations

import pytest
import torch

from lightning_flops._compat import META_CONV_TRACING, fast_meta_kernels

pytestmark = pytest.mark.skipif(not META_CONV_TRACING, reason="the meta-kernel shims are checked on torch >= 2.13")


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, device="meta", dtype=dtype)


ADDMM_CASES = {
    "bias_vector": lambda: (_meta(64), _meta(8, 32), _meta(32, 64)),
    "full_self": lambda: (_meta(8, 64), _meta(8, 32), _meta(32, 64)),
    "row_self": lambda: (_meta(1, 64), _meta(8, 32), _meta(32, 64)),
    "column_self": lambda: (_meta(8, 1), _meta(8, 32), _meta(32, 64)),
    "scalar_self": lambda: (_meta(), _meta(8, 32), _meta(32, 64)),
    "bfloat16": lambda: tuple(_meta(*s, dtype=torch.bfloat16) for s in ((64,), (8, 32), (32, 64))),
    "transposed_weight": lambda: (_meta(64), _meta(8, 32), _meta(64, 32).t()),
    "transposed_input": lambda: (_meta(64), _meta(32, 8).t(), _meta(32, 64)),
    "mixed_dtypes": lambda: (_meta(64), _meta(8, 32, dtype=torch.float16), _meta(32, 64)),
}


@pytest.mark.parametrize("case", ADDMM_CASES)
def test_fast_addmm_meta_kernel_matches_torchs(case: str) -> None:
    inputs = ADDMM_CASES[case]()
    expected = torch.addmm(*inputs, beta=0.5, alpha=2.0)
    with fast_meta_kernels():
        got = torch.addmm(*inputs, beta=0.5, alpha=2.0)
    assert (got.shape, got.stride(), got.dtype, got.device) == (
        expected.shape,
        expected.stride(),
        expected.dtype,
        expected.device,
    )


@pytest.mark.parametrize(
    "inputs",
    [lambda: (_meta(64), _meta(8, 31), _meta(32, 64)), lambda: (_meta(3), _meta(8, 32), _meta(32, 64))],
    ids=["inner_mismatch", "bad_broadcast"],
)
def test_fast_addmm_meta_kernel_raises_what_torch_raises(inputs: object) -> None:
    with pytest.raises(RuntimeError) as expected:
        torch.addmm(*inputs())
    with fast_meta_kernels(), pytest.raises(RuntimeError) as got:
        torch.addmm(*inputs())
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("shim", ["fast_meta_kernels", "traceable_meta_convolution"])
def test_shims_leave_torchs_own_kernels_registered_on_exit(shim: str) -> None:
    import lightning_flops._compat as compat

    op = {"fast_meta_kernels": "aten::addmm", "traceable_meta_convolution": "aten::convolution"}[shim]
    before = torch._C._dispatch_dump(op)  # every kernel per dispatch key, with where it was registered
    with getattr(compat, shim)():
        during = torch._C._dispatch_dump(op)
    assert "lightning_flops/_compat.py" in during and "lightning_flops/_compat.py" not in before
    assert torch._C._dispatch_dump(op) == before
    assert f"{op.replace('::', '/')}/Meta" in torch.library._impls  # torch's own override is still on record


def test_profile_model_makes_one_meta_copy_for_all_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_flops as lf
    import lightning_flops.profiling as profiling

    copies = []
    real_meta_copy = profiling.meta_copy
    monkeypatch.setattr(profiling, "meta_copy", lambda model, *a: copies.append(model) or real_meta_copy(model, *a))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    report = lf.profile_model(model, torch.randn(2, 3, 8, 8), strict=True)
    assert {n: r.device for n, r in report.counters.items()} == {"thop": "meta", "fvcore": "meta", "torch": "meta"}
    assert len(copies) == 1
    expected = 2 * 4 * 6 * 6 * 3 * 3 * 3 + 2 * 4 * 6 * 6 * 5  # conv: batch*out*H*W*in*k*k; linear: batch*in*out
    assert {n: r.macs for n, r in report.counters.items()} == {"thop": expected, "fvcore": expected, "torch": expected}
