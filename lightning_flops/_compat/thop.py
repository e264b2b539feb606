"""thop's internals that lightning-flops touches (checked against thop 0.1.1, also in ultralytics-thop): its rule
table, its per-module parameter count, its printers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from torch import nn


def thop_rules() -> tuple[dict[type, Any], Any]:
    """thop's module-type -> rule table and its "counts nothing" rule (``thop.profile.register_hooks``,
    ``thop.vision.basic_hooks.zero_ops``; thop 0.1.1, also in ultralytics-thop). Raises ImportError without thop."""
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import zero_ops

    return register_hooks, zero_ops


@contextlib.contextmanager
def thop_without_parameter_count() -> Iterator[None]:
    """While active, ``thop.profile`` skips its per-module parameter count (``count_parameters``, a forward hook
    on every module with a rule that sums ``p.nelement()`` in float64 tensors; thop 0.1.1 looks the name up in
    ``thop.profile``'s globals when it adds its hooks). Its ``total_params`` stay 0: we count parameters ourselves
    and use thop's MACs only. A process-wide patch while active, restored on exit; a no-op without that name."""
    import thop.profile  # noqa: F401  (the package's `profile` attribute is the function: take the module)

    thop_profile = sys.modules["thop.profile"]
    previous = vars(thop_profile).get("count_parameters", _ABSENT)
    if previous is _ABSENT:
        yield
        return
    thop_profile.count_parameters = _no_parameter_count
    try:
        yield
    finally:
        thop_profile.count_parameters = previous


_ABSENT = object()


def _no_parameter_count(module: nn.Module, inputs: Any, output: Any) -> None:
    """thop's ``count_parameters`` hook, doing nothing."""


# thop's modules that print: through the builtin, or through thop.utils' prRed/prGreen/prYellow (which hold the
# builtin itself, so they are replaced too); thop 0.1.1
THOP_PRINTING_MODULES = ("thop.profile", "thop.utils", "thop.fx_profile", "thop.vision.basic_hooks", "thop.rnn_hooks")
THOP_PRINT_NAMES = ("print", "prRed", "prGreen", "prYellow")


# (library, where, name, checked against), as in lightning_flops._compat.torch.PRIVATE_APIS
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = (
    ("thop", "thop.profile", "register_hooks", "thop 0.1.1"),
    ("thop", "thop.profile", "count_parameters", "thop 0.1.1"),
    ("thop", "source:thop.profile", "register_forward_hook(count_parameters)", "thop 0.1.1"),
    ("thop", "thop.vision.basic_hooks", "zero_ops", "thop 0.1.1"),
    *(("thop", "thop.utils", name, "thop 0.1.1") for name in ("prRed", "prGreen", "prYellow")),
)
