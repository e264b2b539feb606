"""One vocabulary: every adapter books MACs under known labels, and every matrix-like kernel has a formula or a reason.

The walk covers every registered ``aten`` operator whose name suggests a matrix product, convolution, attention or
recurrence, CUDA-only kernels included (checked by name: they cannot run here).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import flop_registry

from lightning_flops import vocabulary
from lightning_flops.counters.base import RawCount
from lightning_flops.counters.torch_dispatch import FORMULAS, packet_name

_MATRIX_LIKE = re.compile(
    r"mm|matmul|linear|einsum|conv|attention|attn|rnn|lstm|gru|grouped|tensordot|bilinear|gemm|addmv|^mv$|dot|"
    r"^outer$|^ger$|^addr_?$|^inner$|kron"
)
_FORMULA_NAMES = {packet_name(p) for p in (*flop_registry, *FORMULAS)}


def _aten_names() -> list[str]:
    # every operator registered with the dispatcher (CUDA-only kernels included), plus what torch.ops.aten lists;
    # private API, checked against torch 2.13
    registered = {
        n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")
    }
    return sorted(registered | set(dir(torch.ops.aten)))


def _decomposes(name: str) -> bool:
    """Every overload has a CompositeImplicitAutograd kernel: it lowers to other kernels before any counter sees it."""
    packet = getattr(torch.ops.aten, name, None)
    if packet is None or not hasattr(packet, "overloads"):
        return False
    for overload in packet.overloads():
        if overload == "out" or overload.endswith("_out"):
            continue  # `out=` variants: if one reaches the counter without a formula, it is listed as uncounted
        qualified = f"aten::{name}" if overload == "default" else f"aten::{name}.{overload}"
        try:
            composite = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CompositeImplicitAutograd")
        except RuntimeError:  # an overload known to Python only (einsum.sublist): it never reaches the dispatcher
            continue
        if not composite:
            return False
    return True


# names that match by accident: gamma functions ("mm" in "gamma") are special functions, not products
MATRIX_LIKE = [n for n in _aten_names() if _MATRIX_LIKE.search(n) and "gamma" not in n]


def test_the_walk_finds_the_kernels_real_models_reach() -> None:
    assert {"mm", "bmm", "_grouped_mm", "_cudnn_rnn", "_scaled_mm", "_flash_attention_backward"} <= set(MATRIX_LIKE)
    assert len(MATRIX_LIKE) > 150


@pytest.mark.parametrize("name", MATRIX_LIKE)
def test_every_matrix_like_aten_kernel_has_a_formula_or_a_reviewed_reason(name: str) -> None:
    has_formula = name in _FORMULA_NAMES
    reason = vocabulary.zero_mac_reason(name) or vocabulary.REVIEWED_UNCOUNTED.get(name)
    assert has_formula or reason or _decomposes(name), f"aten.{name}: no formula, no zero-list entry, no decomposition"


def test_every_formula_has_an_explicit_label() -> None:
    unlabelled = sorted(n for n in _FORMULA_NAMES if n not in vocabulary.ATEN_LABELS)
    assert unlabelled == []
    assert set(vocabulary.ATEN_LABELS.values()) <= vocabulary.CORE_OPERATORS


def test_no_kernel_is_both_counted_and_on_a_zero_or_uncounted_list() -> None:
    zero = {n for _, names in vocabulary.ZERO_MAC_GROUPS for n in names}
    assert _FORMULA_NAMES & zero == set()
    assert _FORMULA_NAMES & set(vocabulary.REVIEWED_UNCOUNTED) == set()
    assert zero & set(vocabulary.REVIEWED_UNCOUNTED) == set()
    assert all(reason for reason, _ in vocabulary.ZERO_MAC_GROUPS)


def test_module_and_function_labels_are_in_the_vocabulary() -> None:
    assert {label for _, label in vocabulary.module_operators()} <= vocabulary.OPERATORS
    assert set(vocabulary.function_labels().values()) <= vocabulary.OPERATORS


def test_fvcore_operator_names_map_into_the_vocabulary() -> None:
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

    labels = {vocabulary.operator_of_fvcore(name) for name in _DEFAULT_SUPPORTED_OPS}
    assert labels <= vocabulary.OPERATORS
    assert vocabulary.operator_of_fvcore("aten::_grouped_mm") == "matmul"


def test_an_adapter_booking_an_unknown_label_is_a_loud_bug() -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        RawCount(macs=1, module_operators={"": {"fancy_conv": 1}})


def test_vocabulary_and_report_import_no_torch() -> None:
    code = "import sys, lightning_flops.vocabulary, lightning_flops.report; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
