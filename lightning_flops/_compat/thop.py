"""thop's internals that lightning-flops touches (checked against thop 0.1.1, also in ultralytics-thop): its rule
table, its per-module parameter count, its printers."""

from __future__ import annotations

import builtins
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any


def thop_rules() -> tuple[dict[type, Any], Any]:
    """thop's module-type -> rule table and its "counts nothing" rule (``thop.profile.register_hooks``,
    ``thop.vision.basic_hooks.zero_ops``; thop 0.1.1, also in ultralytics-thop). Raises ImportError without thop."""
    from thop.profile import register_hooks
    from thop.vision.basic_hooks import zero_ops

    return register_hooks, zero_ops


_ABSENT = object()


class _ThreadAwareStandIn:
    """Stands in for a callable in one of thop's modules: nothing on a thread where ``skip()`` holds, the callable
    itself on every other thread (the same result, the same arguments)."""

    def __init__(self, original: Callable[..., Any], skip: Callable[[], bool]) -> None:
        self.original = original
        self.skip = skip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.skip():
            return None
        return self.original(*args, **kwargs)


class _StandIns:
    """Thread-aware stand-ins for names in thop's modules, put in place by the first thread to enter :meth:`active`
    (and by every later entry for a module imported since) and taken back by the last to leave; a name someone else
    replaced meanwhile keeps theirs. Process-wide names, but every other thread meets thop's own callables.

    Args:
        places: ``(module, name, absent)`` for each name; ``absent``: what to stand in for where the module has no
            such name of its own (thop's modules print through the builtin), ``None``: leave it alone.
    """

    def __init__(self, places: tuple[tuple[str, str, Callable[..., Any] | None], ...]) -> None:
        self.places = places
        self._lock = threading.Lock()
        self._users = 0
        self._ours: dict[tuple[str, str], tuple[_ThreadAwareStandIn, Any]] = {}  # -> (ours, what it replaced)

    @contextlib.contextmanager
    def active(self, skip: Callable[[], bool]) -> Iterator[None]:
        """While active, the stand-ins skip the call on a thread where ``skip()`` holds."""
        with self._lock:
            self._users += 1
            self._place(skip)
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._take_back()

    def _place(self, skip: Callable[[], bool]) -> None:
        for module_name, name, absent in self.places:
            module = sys.modules.get(module_name)
            if module is None:
                continue
            current = vars(module).get(name, _ABSENT)
            placed = self._ours.get((module_name, name))
            if (placed is not None and current is placed[0]) or (current is _ABSENT and absent is None):
                continue
            stand_in = _ThreadAwareStandIn(absent if current is _ABSENT else current, skip)
            setattr(module, name, stand_in)
            self._ours[(module_name, name)] = (stand_in, current)

    def _take_back(self) -> None:
        for (module_name, name), (stand_in, previous) in self._ours.items():
            module = sys.modules.get(module_name)
            if module is None or vars(module).get(name) is not stand_in:
                continue  # someone replaced it meanwhile: theirs stays
            if previous is _ABSENT:
                vars(module).pop(name, None)
            else:
                setattr(module, name, previous)
        self._ours.clear()


_SKIPPING = threading.local()  # .depth > 0 on a thread inside thop_without_parameter_count()
_PARAMETER_COUNT = _StandIns((("thop.profile", "count_parameters", None),))


def _skipping_here() -> bool:
    return getattr(_SKIPPING, "depth", 0) > 0


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

    _SKIPPING.depth = getattr(_SKIPPING, "depth", 0) + 1
    try:
        with _PARAMETER_COUNT.active(_skipping_here):
            yield
    finally:
        _SKIPPING.depth -= 1


# thop's modules that print: through the builtin, or through thop.utils' prRed/prGreen/prYellow (which hold the
# builtin itself, so they are replaced too); thop 0.1.1
THOP_PRINTING_MODULES = ("thop.profile", "thop.utils", "thop.fx_profile", "thop.vision.basic_hooks", "thop.rnn_hooks")
THOP_PRINT_NAMES = ("print", "prRed", "prGreen", "prYellow")
_PRINTERS = _StandIns(
    tuple(
        (module, name, builtins.print if name == "print" else None)
        for module in THOP_PRINTING_MODULES
        for name in THOP_PRINT_NAMES
    )
)


def thop_printers_muted(skip: Callable[[], bool]) -> contextlib.AbstractContextManager[None]:
    """While active, thop's printers (in its modules imported by the time of entry) print nothing on a thread where
    ``skip()`` holds and print as always on every other thread; put in place by the first thread to enter, taken
    back by the last to leave (``sys.stdout`` is never swapped)."""
    return _PRINTERS.active(skip)


# (library, where, name, checked against), as in lightning_flops._compat.torch.PRIVATE_APIS
PRIVATE_APIS: tuple[tuple[str, str, str, str], ...] = (
    ("thop", "thop.profile", "register_hooks", "thop 0.1.1"),
    ("thop", "thop.profile", "count_parameters", "thop 0.1.1"),
    ("thop", "source:thop.profile", "register_forward_hook(count_parameters)", "thop 0.1.1"),
    ("thop", "thop.vision.basic_hooks", "zero_ops", "thop 0.1.1"),
    *(("thop", "thop.utils", name, "thop 0.1.1") for name in ("prRed", "prGreen", "prYellow")),
)
