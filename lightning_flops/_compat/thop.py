"""thop's internals that lightning-flops touches (checked against thop 0.1.1, also in ultralytics-thop): its rule
table, its per-module parameter count, its printers."""

from __future__ import annotations

import contextlib
import sys
import threading
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
    """While active, ``thop.profile`` on this thread skips its per-module parameter count (``count_parameters``, a
    forward hook on every module with a rule that sums ``p.nelement()`` in float64 tensors; thop 0.1.1 looks the
    name up in ``thop.profile``'s globals when it adds its hooks). Its ``total_params`` stay 0: we count parameters
    ourselves and use thop's MACs only.

    Thread-aware: the name holds a stand-in that skips the count on a thread inside this context and is thop's own
    hook everywhere else, so another thread's ``thop.profile`` meanwhile counts its parameters as always. The first
    thread to enter puts it in place, the last to leave puts thop's back. A no-op without that name."""
    import thop.profile  # noqa: F401  (the package's `profile` attribute is the function: take the module)

    global _users, _saved
    thop_profile = sys.modules["thop.profile"]
    with _LOCK:
        current = vars(thop_profile).get("count_parameters", _ABSENT)
        installed = current is not _ABSENT
        if installed:
            if _users == 0 or not isinstance(current, _ParameterCountOffHere):
                _saved = current
                thop_profile.count_parameters = _ParameterCountOffHere(current)
            _users += 1
    _SKIPPING.depth = getattr(_SKIPPING, "depth", 0) + 1
    try:
        yield
    finally:
        _SKIPPING.depth -= 1
        if installed:
            with _LOCK:
                _users -= 1
                if _users == 0 and isinstance(vars(thop_profile).get("count_parameters"), _ParameterCountOffHere):
                    thop_profile.count_parameters = _saved  # ours is still there: thop's own goes back


_ABSENT = object()
_LOCK = threading.Lock()
_SKIPPING = threading.local()  # .depth > 0 on a thread inside thop_without_parameter_count()
_users = 0
_saved: Any = _ABSENT


class _ParameterCountOffHere:
    """Stands in for thop's ``count_parameters`` hook: nothing on a thread that skips the count, thop's hook on any
    other thread."""

    def __init__(self, original: Any) -> None:
        self.original = original

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if getattr(_SKIPPING, "depth", 0) > 0:
            return None
        return self.original(module, inputs, output)


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
