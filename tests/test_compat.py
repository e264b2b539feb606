"""``lightning_flops._compat``: every private name it relies on still exists (an upgrade that drops one fails here,
naming it), no other module touches one, and its shims give what torch gives and are gone when they exit."""

from __future__ import annotations

import ast
import importlib
import inspect
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops
from lightning_flops import _compat
from lightning_flops._compat import META_CONV_TRACING, PRIVATE_APIS, fast_meta_kernels

meta_shims = pytest.mark.skipif(not META_CONV_TRACING, reason="the meta-kernel shims are checked on torch >= 2.13")


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


@meta_shims
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


@meta_shims
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


@meta_shims
@pytest.mark.parametrize("shim", ["fast_meta_kernels", "traceable_meta_convolution"])
def test_shims_register_nothing_with_the_dispatcher(shim: str) -> None:
    op = {"fast_meta_kernels": "aten::addmm", "traceable_meta_convolution": "aten::convolution"}[shim]
    before = torch._C._dispatch_dump(op)  # every kernel per dispatch key, with where it was registered
    with getattr(_compat, shim)():
        assert torch._C._dispatch_dump(op) == before
    assert torch._C._dispatch_dump(op) == before


class _ShapeOnlyWatch:
    """Counts the calls of our shape-only ``add.Tensor`` kernel and the threads they come from."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.threads: list[str] = []
        kernels = _compat.torch._fast_kernels()
        inner = kernels[torch.ops.aten.add.Tensor]

        def watched(*args: Any, **kwargs: Any) -> Any:
            self.threads.append(threading.current_thread().name)
            return inner(*args, **kwargs)

        monkeypatch.setitem(kernels, torch.ops.aten.add.Tensor, watched)


@meta_shims
def test_a_meta_count_reaches_no_other_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point 2 of issue 17: while a count runs on meta, another thread's meta and FakeTensor work runs torch's own
    kernels, and the dispatcher holds no kernel of ours."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    watch = _ShapeOnlyWatch(monkeypatch)
    before = torch._C._dispatch_dump("aten::add.Tensor")
    inside, other_done = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    class Waits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.linear(x) + x
            if x.is_meta and not inside.is_set():
                seen["dump"] = torch._C._dispatch_dump("aten::add.Tensor")
                inside.set()
                other_done.wait(30)
            return y

    def other() -> None:
        inside.wait(30)
        a = torch.empty(4, 8, device="meta")
        seen["meta"] = (a + a).shape
        with FakeTensorMode():
            b = torch.empty(4, 8)
            seen["fake"] = (b + b).shape
        other_done.set()

    thread = threading.Thread(target=other, name="other")
    thread.start()
    report = lightning_flops.profile_model(Waits(), torch.randn(2, 8), counters=("torch",), strict=True)
    thread.join()
    assert report.counters["torch"].device == "meta"
    assert report.counters["torch"].macs == 2 * 8 * 8  # batch*in*out
    assert seen["dump"] == before and "lightning_flops" not in before
    assert seen["meta"] == seen["fake"] == (4, 8)
    assert "other" not in watch.threads and watch.threads  # ours ran on the counting thread only


@meta_shims
def test_profile_model_makes_one_meta_copy_for_all_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_flops as lf
    import lightning_flops.placement as placement

    copies = []
    real_meta_copy = placement.meta_copy
    monkeypatch.setattr(placement, "meta_copy", lambda model, *a: copies.append(model) or real_meta_copy(model, *a))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    report = lf.profile_model(model, torch.randn(2, 3, 8, 8), strict=True)
    assert {n: r.device for n, r in report.counters.items()} == {"thop": "meta", "fvcore": "meta", "torch": "meta"}
    assert len(copies) == 1
    expected = 2 * 4 * 6 * 6 * 3 * 3 * 3 + 2 * 4 * 6 * 6 * 5  # conv: batch*out*H*W*in*k*k; linear: batch*in*out
    assert {n: r.macs for n, r in report.counters.items()} == {"thop": expected, "fvcore": expected, "torch": expected}


# ------------------------------------------------------------------------------- every private name still exists
def _tensorboard_logger(tmp_path: Path) -> Iterator[Any]:
    from lightning.pytorch.loggers import TensorBoardLogger

    yield TensorBoardLogger(str(tmp_path))


def _lightning_module() -> Iterator[Any]:
    from lightning.pytorch import LightningModule

    yield LightningModule()


def _datamodule() -> Iterator[Any]:
    from lightning.pytorch import LightningDataModule

    yield LightningDataModule()


def _instances(tmp_path: Path) -> dict[str, Callable[[], Iterator[Any]]]:
    from torch.utils.flop_counter import FlopCounterMode

    return {
        "nn.Module": lambda: iter([nn.Linear(2, 2)]),
        "OpOverload": lambda: iter([torch.ops.aten.add.Tensor]),
        "RemovableHandle": lambda: iter([nn.Linear(2, 2).register_forward_hook(lambda *args: None)]),
        "OptimizedModule": lambda: iter([torch.compile(nn.Linear(2, 2))]),  # wraps only: nothing is compiled
        "QuantizedLinear": lambda: iter([torch.ao.nn.quantized.dynamic.Linear(2, 2)]),
        "FlopCounterMode": lambda: iter([FlopCounterMode(display=False)]),
        "TensorBoardLogger": lambda: _tensorboard_logger(tmp_path),
        "LightningModule": _lightning_module,
        "LightningDataModule": _datamodule,
    }


@pytest.mark.parametrize("entry", PRIVATE_APIS, ids=lambda e: f"{e[1]}.{e[2]}")
def test_every_private_name_compat_relies_on_still_exists(entry: tuple[str, str, str, str], tmp_path: Path) -> None:
    library, where, name, checked = entry
    message = (
        f"lightning_flops._compat relies on the private `{name}` of `{where}` ({library}), checked against "
        f"{checked}; this {library} no longer has it: update the shim in lightning_flops/_compat/"
    )
    if where.startswith("instance:"):
        factory = _instances(tmp_path)[where.removeprefix("instance:")]
        made = factory()
        try:
            assert hasattr(next(made), name), message
        finally:
            getattr(made, "close", lambda: None)()  # a generator's clean-up (destroys the Library)
    elif where.startswith("source:"):
        module = importlib.import_module(where.removeprefix("source:"))
        assert name in inspect.getsource(module), message
    else:
        module_name, _, owner = where.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except ImportError as err:
            pytest.fail(f"{message} (cannot import `{module_name}`: {err})")
        if owner:
            assert hasattr(target, owner), message
            target = getattr(target, owner)
        assert hasattr(target, name), message


def test_private_names_have_the_shape_compat_expects() -> None:
    import torch.nn.modules.module as module_globals
    from thop.profile import register_hooks

    module = nn.Linear(2, 2)
    for key in _compat.MODULE_HOOK_DICTS + _compat.MODULE_TENSOR_DICTS + (_compat.MODULE_CHILDREN_DICT,):
        assert isinstance(module.__dict__[key], dict), f"nn.Module.{key} is no longer a dict in __dict__ (torch 2.13)"
    for key, hooks in _compat.HOOK_FLAG_DICTS.items():
        assert key in module.__dict__ and hooks in _compat.MODULE_HOOK_DICTS, key
    for key in _compat.GLOBAL_HOOK_DICTS:
        assert isinstance(getattr(module_globals, key), dict), f"torch.nn.modules.module.{key} is not a dict"
    assert set(_compat.GLOBAL_HOOK_FLAG_DICTS) <= set(_compat.GLOBAL_HOOK_DICTS)
    assert register_hooks[nn.Linear] is not None, "thop.profile.register_hooks no longer maps nn.Linear (thop 0.1.1)"
    assert torch._decomp.global_decomposition_table["post_autograd"][torch.ops.aten.addmm.default] is not None


def test_the_shims_give_what_the_private_names_give(tmp_path: Path) -> None:
    from lightning.pytorch import LightningModule
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch._subclasses.fake_tensor import FakeTensorMode

    inner = nn.Linear(2, 3)
    assert _compat.compiled_inner(torch.compile(inner)) is inner
    assert _compat.compiled_inner(inner) is None
    assert _compat.module_parameters(inner).keys() == {"weight", "bias"}
    assert _compat.module_buffers(nn.BatchNorm1d(4)).keys() == {"running_mean", "running_var", "num_batches_tracked"}
    base = torch.zeros(4, 4)
    assert (
        _compat.storage_address(base[1:])
        == _compat.storage_address(base.data)
        != _compat.storage_address(torch.zeros(4))
    )
    with FakeTensorMode():
        fake = torch.empty(3)
    assert _compat.is_fake_tensor(fake) and not _compat.is_fake_tensor(torch.empty(3))
    assert _compat.is_op_overload(torch.ops.aten.add.Tensor) and not _compat.is_op_overload(torch.add)
    assert _compat.op_schema(torch.ops.aten.add_.Tensor).arguments[0].alias_info.is_write
    lazy = nn.LazyLinear(3)
    assert any(_compat.is_lazy_shape_hook(h) for h in lazy._forward_pre_hooks.values())

    class Quiet(LightningModule):
        def __init__(self, width: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters(logger=False)

    class Loud(Quiet):
        def __init__(self, width: int = 8) -> None:
            LightningModule.__init__(self)
            self.save_hyperparameters()

    assert (_compat.logs_hyperparams(Quiet()), _compat.logs_hyperparams(Loud())) == (False, True)
    off = TensorBoardLogger(str(tmp_path), default_hp_metric=False)
    assert (_compat.default_hp_metric(TensorBoardLogger(str(tmp_path))), _compat.default_hp_metric(off)) == (
        True,
        False,
    )
    assert _compat.tensorboard_hparams(off, {"a": {"b": 1}, "c": None}) == {"a/b": 1, "c": "None"}


# ------------------------------------------------------------------------------------ and nowhere but in _compat
_LIBRARIES = ("torch", "lightning", "pytorch_lightning", "thop", "fvcore")
# where a dispatcher operator is named (``torch.ops.aten._grouped_mm``, ``aten._to_copy``): the operator table, not a
# private Python name
_OPERATOR_ROOTS = ("aten", "_aten", "prims", "quantized")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# Python's own public ``_names`` (namedtuple's API), and private names of other libraries than the four (the scan
# cannot tell whose a ``getattr(x, "_name")`` is): transformers' ``config._attn_implementation``
_PUBLIC_UNDERSCORED = {"_fields", "_asdict", "_replace", "_make", "_field_defaults", "_attn_implementation"}


def _own_private_names(package: Path) -> set[str]:
    """Every ``_name`` lightning-flops defines itself outside ``_compat``: functions, classes, variables, attributes
    it assigns, parameters. Anything else spelled ``_name`` comes from a library."""
    own = set()
    for path in package.rglob("*.py"):
        if "_compat" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
    return {name for name in own if _is_private(name)} | _PUBLIC_UNDERSCORED


def _chain_root(node: ast.expr) -> tuple[str | None, list[str]]:
    """``(root name, attribute path)`` of ``a.b.c`` -> ``("a", ["b", "c"])``; ``None`` for a root that is no name."""
    path: list[str] = []
    while isinstance(node, ast.Attribute):
        path.insert(0, node.attr)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), path


def _not_public(module_name: str, name: str) -> bool:
    """Whether ``from module_name import name`` takes a name that module does not publish: ``_name``, or a name
    outside the module's ``__all__`` that is no submodule."""
    if _is_private(name):
        return True
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False  # an optional library that is not installed: nothing to compare against
    published = getattr(module, "__all__", None)
    return published is not None and name not in published and not inspect.ismodule(getattr(module, name, None))


def _private_uses(path: Path, own: set[str] = frozenset()) -> list[str]:
    """``line: what`` for each name of torch/thop/fvcore/Lightning that ``path`` reaches although it is private: an
    import of a ``_module`` or ``_name`` (or a name outside that module's ``__all__``), an attribute ``x._name`` or a
    ``getattr(x, "_name")`` that is not one of lightning-flops' own names (``own``) nor an operator of the dispatcher
    (``aten._to_copy``). An allow-list: a new private name fails here without being listed anywhere."""
    tree = ast.parse(path.read_text())
    library_of: dict[str, str] = {}  # local name -> the top-level package it was imported from
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                library_of[alias.asname or top] = top
                if top in _LIBRARIES and any(_is_private(part) for part in alias.name.split(".")):
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            for alias in node.names:
                library_of[alias.asname or alias.name] = top
            if top not in _LIBRARIES:
                continue
            private = [a.name for a in node.names if _not_public(node.module, a.name)]
            if any(_is_private(part) for part in node.module.split(".")) or private:
                found.append(f"{node.lineno}: from {node.module} import {', '.join(private or ['...'])}")
            elif top in ("thop", "fvcore") and node.module != "fvcore.nn":
                found.append(f"{node.lineno}: from {node.module} (an internal module)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
            root, chain = _chain_root(node)
            if root in _OPERATOR_ROOTS or chain[:1] == ["ops"]:
                continue  # a dispatcher operator (torch.ops.aten._to_copy), named as the operator table names it
            if root is not None and library_of.get(root, "torch") not in _LIBRARIES:
                continue  # the standard library's or another package's (argparse._SubParsersAction)
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and _is_private(node.slice.value)
            and node.slice.value not in own
        ):
            found.append(f"{node.lineno}: [{node.slice.value!r}]")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_no_module_but_compat_touches_a_private_api() -> None:
    package = Path(lightning_flops.__file__).parent
    own = _own_private_names(package)
    offenders = {
        str(path.relative_to(package)): uses
        for path in sorted(package.rglob("*.py"))
        if "_compat" not in path.relative_to(package).parts and (uses := _private_uses(path, own))
    }
    assert offenders == {}, f"private APIs touched outside lightning_flops/_compat/: {offenders}"


def test_the_scan_sees_a_private_use(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import argparse\n"
        "from torch import nn\n"
        "from torch.utils._python_dispatch import TorchDispatchMode\n"
        "from thop.profile import register_hooks\n"
        "from torch.utils.flop_counter import FlopCounterMode, flop_registry\n"
        "x = module._buffers\n"
        "y = getattr(model, '_orig_mod', None)\n"
        "z = isinstance(m, nn.modules.conv._ConvNd)\n"
        "w = self._generate_state_key()\n"
        "v = vars(module)['_forward_hooks']\n"
        "ok = (argparse._SubParsersAction, torch.ops.aten._to_copy.default, aten._grouped_mm, self._mine)\n"
    )
    lines = [use.split(":")[0] for use in _private_uses(sample, own={"_mine"})]
    assert lines == ["3", "4", "5", "6", "7", "8", "9", "10"], _private_uses(sample, own={"_mine"})


def test_thop_skips_its_parameter_walk_and_gets_it_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    thop_profile = sys.modules.get("thop.profile") or importlib.import_module("thop.profile")
    original = thop_profile.count_parameters
    walks: list[nn.Module] = []

    def counting(module: nn.Module, inputs: Any, output: Any) -> None:
        walks.append(module)
        original(module, inputs, output)

    monkeypatch.setattr(thop_profile, "count_parameters", counting)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    report = lightning_flops.profile_model(model, torch.randn(2, 4), counters=("thop",))
    assert report.counters["thop"].ok
    assert report.counters["thop"].macs == 2 * (4 * 8 + 8 * 3)  # batch * (in*hidden + hidden*out)
    assert walks == []  # thop's per-module parameter count did not run (its total_params are unused)
    assert thop_profile.count_parameters is counting  # and the hook is back after the call


def test_flop_formula_shims_read_torchs_registry_as_flop_counter_mode_does() -> None:
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    wrapped = flop_registry[aten.mm]
    inner = _compat.shape_formula(wrapped)
    assert inner is not None and inner is wrapped.__wrapped__
    a, b, out = torch.empty(3, 5, device="meta"), torch.empty(5, 7, device="meta"), torch.empty(3, 7, device="meta")
    assert inner(a.shape, b.shape, out_shape=out.shape) == wrapped(a, b, out_val=out) == 2 * 3 * 5 * 7
    assert _compat.shape_formula(lambda *a, **k: 0) is None  # a raw formula of ours: called as it is
    assert _compat.decomposes_implicitly(aten.linear.default) and _compat.decomposes_implicitly(aten.matmul.default)
    assert not _compat.decomposes_implicitly(aten.addmm.default) and not _compat.decomposes_implicitly(aten.mm.default)


# ------------------------------------------------------------------------ version gates: bounded above, faked here
@pytest.mark.parametrize(
    ("version", "checked"),
    [("2.13.0", True), ("2.13.1+cu128", True), ("2.13.0a0+git1234", True), ("2.12.1", False), ("2.14.0", False)],
)
def test_the_torch_gate_is_bounded_above_and_below(version: str, checked: bool) -> None:
    assert _compat.torch_checked(version) is checked


def test_outside_the_gate_every_shim_takes_torchs_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_flops.counters.fvcore_jit import FvcoreCounter

    conv = nn.Conv2d(3, 4, 3)
    quantized = torch.ao.nn.quantized.dynamic.Linear(2, 2)
    inside = (_compat.conv_module_types(), _compat.pool_module_types(), _compat.packed_params(quantized))
    assert inside[0] == (nn.modules.conv._ConvNd,) and inside[2] is not None
    monkeypatch.setattr(torch, "__version__", "2.14.0")
    assert not _compat.torch_checked()
    before = torch._C._dispatch_dump("aten::convolution"), torch._C._dispatch_dump("aten::addmm")
    with _compat.traceable_meta_convolution(), _compat.fast_meta_kernels():
        assert (torch._C._dispatch_dump("aten::convolution"), torch._C._dispatch_dump("aten::addmm")) == before
    assert nn.Conv2d in _compat.conv_module_types() and nn.modules.conv._ConvNd not in _compat.conv_module_types()
    assert nn.MaxPool2d in _compat.pool_module_types() and nn.BatchNorm2d in _compat.batch_norm_types()
    assert _compat.packed_params(quantized) is None
    from torch.utils.flop_counter import flop_registry

    assert _compat.shape_formula(flop_registry[torch.ops.aten.mm]) is None  # called as FlopCounterMode calls it
    assert not FvcoreCounter().can_count_on_meta(nn.Sequential(conv))  # the meta trace needs the shim: in place
    report = lightning_flops.profile_model(nn.Sequential(conv), torch.randn(1, 3, 8, 8), strict=True)
    assert {n: r.macs for n, r in report.counters.items()} == dict.fromkeys(("thop", "fvcore", "torch"), 4 * 6 * 6 * 27)


def test_outside_the_lightning_gate_the_state_key_is_built_as_lightning_builds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lightning

    monitor = lightning_flops.FlopsMonitor()
    inside = monitor.state_key
    monkeypatch.setattr(lightning, "__version__", "2.7.0")
    assert not _compat.lightning_checked()
    assert monitor.state_key == inside  # the same string, built without Lightning's private helper
