"""The torch counter's own dispatch loop (``_ReferenceMode``) counts exactly what FlopCounterMode counts with the same
formulas: totals compared on every operator of the ops table, forward and forward + backward, on CPU and meta, on
models, and with a higher-order operator (``torch.cond``), handled by FlopCounterMode's own code."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_flops._compat import fast_meta_kernels, mark_raw_formula
from lightning_flops.counters.torch_dispatch import FORMULAS, count_flops_and_uncounted
from lightning_flops.inputs import iter_tensors, map_tensors
from tests.test_ops import ALL_OPS, Op


def flop_counter_mode_total(fn: Callable[[], Any]) -> int:
    """What torch's FlopCounterMode counts, with our extra formulas, for ``fn()``."""
    mapping = {packet: mark_raw_formula(lambda *a, _f=f, **k: _f(*a, **k)) for packet, f in FORMULAS.items()}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return counter.get_total_flops()


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _step(model: nn.Module, inputs: Any, backward: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.set_grad_enabled(backward):
            out = _call(model, inputs)
            if backward:
                losses = [t.float().sum() for _, t in iter_tensors(out) if t.requires_grad]
                if losses:
                    torch.stack(losses).sum().backward()

    return run


def _placed(op: Op, device: str) -> tuple[nn.Module, Any]:
    model, inputs = op.build(), op.inputs()
    if device == "meta":
        model = copy.deepcopy(model).to("meta")
        inputs = map_tensors(lambda t: t.to("meta"), inputs)
    return model.eval(), inputs


# forward for every operator; forward + backward where the module has a parameter to take a gradient of
CASES = [
    pytest.param(op, backward, id=f"{op.id}-{'forward_backward' if backward else 'forward'}")
    for op in ALL_OPS
    for backward in (False, True)
    if not backward or any(p.requires_grad for p in op.build().parameters())
]


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize(("op", "backward"), CASES)
def test_reference_mode_counts_what_flop_counter_mode_counts(op: Op, device: str, backward: bool) -> None:
    model, inputs = _placed(op, device)
    kernels = fast_meta_kernels() if device == "meta" else torch.no_grad() if not backward else torch.enable_grad()
    with kernels:
        expected = flop_counter_mode_total(_step(model, inputs, backward))
        ours = count_flops_and_uncounted(_step(model, inputs, backward), model)[0]
    assert ours == expected


def test_reference_mode_counts_a_transformer_and_an_lstm_like_flop_counter_mode() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)
    lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
    for model, x in ((layer.train(), torch.randn(2, 5, 16)), (lstm, torch.randn(3, 4, 8))):
        for backward in (False, True):
            expected = flop_counter_mode_total(_step(model, x, backward))
            assert expected > 0
            assert count_flops_and_uncounted(_step(model, x, backward), model)[0] == expected


class Branchy(nn.Module):
    """``torch.cond``: a higher-order operator, which FlopCounterMode counts as its larger branch."""

    def __init__(self) -> None:
        super().__init__()
        self.small, self.large = nn.Linear(4, 4), nn.Linear(4, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.small(t).sum(-1), lambda t: self.large(t).sum(-1), (x,))


def test_a_higher_order_operator_is_counted_as_flop_counter_mode_counts_it() -> None:
    model, x = Branchy(), torch.randn(2, 4)
    with torch.no_grad():
        expected = flop_counter_mode_total(lambda: model(x))
        ours = count_flops_and_uncounted(lambda: model(x), model)[0]
    assert ours == expected == 2 * 2 * 4 * 64  # the larger branch: batch * in * out, 2 FLOPs per MAC
