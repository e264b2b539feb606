"""The training step counted as the model's device runs it: ``train_step_flops`` (on the meta copy, or in place
where meta cannot reproduce a fused CPU kernel) equals torch's FlopCounterMode, with our formulas, over a real CPU
forward + ``backward()`` run here; tensors made to require grad inside ``forward`` and pytree inputs that require
grad are counted as the real backward computes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightning_flops as lf
from lightning_flops.counters.formulas import FORMULAS
from lightning_flops.inputs import iter_tensors, split_input


def real_step_flops(model: nn.Module, example: Any) -> int:
    """FlopCounterMode (torch's formulas and ours) over a real CPU forward and ``backward()`` of the summed outputs."""
    args, kwargs = split_input(example)
    with FlopCounterMode(display=False, custom_mapping=FORMULAS) as counter:
        output = model(*args, **kwargs)
        losses = [t.sum() for _, t in iter_tensors(output) if t.is_floating_point() and t.requires_grad]
        torch.stack(losses).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.mark.parametrize("model_type", ["vit", "clip", "albert", "llama", "whisper", "wav2vec2"])
def test_transformers_train_step_equals_the_real_cpu_step(model_type: str) -> None:
    # vit, clip, albert, llama, whisper: CPU SDPA runs the flash kernel, whose backward recomputes QK^T (on meta it
    # decomposed to bmm: vit was 73,984 FLOPs short at this size); wav2vec2 sets `hidden_states.requires_grad = True`
    # in forward, so the real backward computes the first conv's input gradient (16,363,520 FLOPs were skipped)
    pytest.importorskip("transformers")
    from tests.hf_zoo import build

    small_convs = {"conv_dim": [16] * 7} if model_type == "wav2vec2" else {}  # its feature encoder: 512 by default
    model, example = build(model_type, **small_convs)
    model.train()
    counted = lf.train_step_flops(model, example)
    assert counted == real_step_flops(model, example)


class Foo(nn.Module):
    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = x["a"].relu_()
        return {"a": torch.mm(x, x)}


class Mod(nn.Module):
    """pytorch's own ``test_pytrees`` literal (test/test_flop_counter.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = Foo(), Foo()

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.b(self.a(x))


def test_pytree_input_that_requires_grad_is_counted_as_pytorch_counts_it() -> None:
    def example() -> tuple[dict[str, torch.Tensor]]:
        return ({"a": torch.randn(10, 10, requires_grad=True).clone()},)

    expected = real_step_flops(Mod(), example())
    assert expected == 12_000  # pytorch's literal: 2 mm forward + 4 mm backward, each 2 * 10 * 10 * 10
    assert lf.train_step_flops(Mod(), example()) == expected  # was 4,000: the forward only


class RequiresGradInForward(nn.Module):
    """As wav2vec2's feature encoder: the input is made to require grad inside ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]
        x.requires_grad = True
        return self.conv(x)


# fmt: off
SMALL: list[tuple[str, Callable[[], nn.Module], Callable[[], torch.Tensor]]] = [
    ("requires_grad_in_forward", RequiresGradInForward, lambda: torch.randn(2, 40)),
    ("lstm", lambda: nn.LSTM(8, 12, num_layers=2, batch_first=True), lambda: torch.randn(3, 5, 8)),
    ("encoder_layer", lambda: nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True),
     lambda: torch.randn(2, 5, 16)),
]
# fmt: on


@pytest.mark.parametrize(("name", "build", "make_input"), SMALL, ids=[s[0] for s in SMALL])
def test_small_models_train_step_equals_the_real_cpu_step(
    name: str, build: Callable[[], nn.Module], make_input: Callable[[], torch.Tensor]
) -> None:
    torch.manual_seed(0)
    model, x = build().train(), make_input()
    assert lf.train_step_flops(model, x) == real_step_flops(model, x)


def test_requires_grad_in_forward_counts_the_input_gradient() -> None:
    model, x = RequiresGradInForward(), torch.randn(2, 40)
    conv = 2 * 8 * 36 * 5  # batch * out channels * out length * kernel (in channels 1)
    assert lf.train_step_flops(model, x) == 2 * 3 * conv  # forward, weight gradient, input gradient; 2 FLOPs/MAC
