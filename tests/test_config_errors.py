"""Bad arguments raise FlopsConfigError at once, naming the argument in backticks and the allowed values."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf


def _rule(module: nn.Module, inputs: tuple, output: Any) -> int:
    return 0


class Exploding(nn.Module):
    """Any forward call would fail the test: validation must happen before counting."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("forward ran before the arguments were checked")


# (keyword arguments, argument name, fragments of the allowed values that the message must show)
BAD_ARGUMENTS = [
    ({"counters": ("thop", "ptflops")}, "counters", ["'thop'", "'fvcore'", "'torch'", "'ptflops'"]),
    ({"counters": ()}, "counters", ["'thop'", "'fvcore'", "'torch'"]),
    ({"counters": "torch"}, "counters", ["'thop'", "'fvcore'", "'torch'"]),
    ({"counters": ("torch", "torch")}, "counters", ["('torch', 'torch')"]),
    ({"limit": -0.1}, "limit", [">= 0", "-0.1"]),
    ({"limit": float("nan")}, "limit", [">= 0", "nan"]),
    ({"limit": "1%"}, "limit", [">= 0", "'1%'"]),
    ({"mode": "training"}, "mode", ["'eval'", "'train'", "'training'"]),
    ({"flag_on": "gap"}, "flag_on", ["'core'", "'total'", "'gap'"]),
    ({"device": "cuda:7"}, "device", ["None", "'meta'", "'model'", "'cuda:7'"]),
    ({"batch_size": 0}, "batch_size", ["None", ">= 1", "0"]),
    ({"batch_size": 2.5}, "batch_size", ["None", ">= 1", "2.5"]),
    ({"batch_size": True}, "batch_size", ["None", ">= 1", "True"]),
    ({"custom_ops": [nn.LayerNorm]}, "custom_ops", ["nn.Module subclass", "list"]),
    ({"custom_ops": {"LayerNorm": _rule}}, "custom_ops", ["nn.Module subclasses", "'LayerNorm'"]),
    ({"custom_ops": {nn.LayerNorm: -4}}, "custom_ops", ["callables or numbers >= 0", "-4"]),
]


@pytest.mark.parametrize(
    ("kwargs", "argument", "allowed"), BAD_ARGUMENTS, ids=[f"{a}-{i}" for i, (_, a, _) in enumerate(BAD_ARGUMENTS)]
)
def test_bad_argument_raises_naming_it_and_the_allowed_values(
    kwargs: dict[str, Any], argument: str, allowed: list[str]
) -> None:
    with pytest.raises(lf.FlopsConfigError) as info:
        lf.profile_model(Exploding(), torch.randn(2, 4), **kwargs)
    message = str(info.value)
    assert message.startswith(f"`{argument}` ")
    for fragment in allowed:
        assert fragment in message


@pytest.mark.parametrize("example_input", ["a string", 3, None, 2.5, {1, 2}], ids=repr)
def test_example_input_of_the_wrong_type_raises(example_input: Any) -> None:
    with pytest.raises(lf.FlopsConfigError, match=re.escape("`example_input` must be")) as info:
        lf.profile_model(Exploding(), example_input)
    message = str(info.value)
    assert "Tensor" in message and "tuple/list" in message and "dict" in message


def test_example_input_dict_with_non_str_keys_raises() -> None:
    with pytest.raises(lf.FlopsConfigError, match=re.escape("`example_input` as a dict must have str keys")):
        lf.profile_model(Exploding(), {1: torch.randn(2, 4)})


def test_model_that_is_not_a_module_raises() -> None:
    with pytest.raises(lf.FlopsConfigError, match=re.escape("`model` must be a torch.nn.Module, got function")):
        lf.profile_model(lambda x: x, torch.randn(2, 4))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(lf.FlopsConfigError, ValueError)


@pytest.mark.parametrize("limit", [0, 0.0, 1, 0.5])
def test_valid_limits_are_accepted(limit: float) -> None:
    report = lf.profile_model(nn.Linear(4, 4), torch.randn(2, 4), counters=("torch",), limit=limit)
    assert report.limit == float(limit)
