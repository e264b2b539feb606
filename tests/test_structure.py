"""Structure that shows the reference's rule: torch-free result types, one formula registry, one counting engine, no
import circle and no private names across modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_flops"


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``from X import a, b`` and ``import X`` of a module, lazy ones inside functions included."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
    return found


def test_no_counter_imports_the_report() -> None:
    # report imports explain and render back (lazily): a counter importing report closed the one import circle
    for path in sorted((PACKAGE / "counters").glob("*.py")):
        modules = {module for module, _ in _imports(path)}
        assert "lightning_flops.report" not in modules, path.name


def test_result_types_import_no_torch() -> None:
    code = "import sys, lightning_flops.types as t; assert 'torch' not in sys.modules, 'torch'; print(t.Uncounted)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr


def test_old_import_places_give_the_same_types() -> None:
    from lightning_flops.counters.base import RawCount
    from lightning_flops.report import Uncounted
    from lightning_flops.types import RawCount as NewRawCount
    from lightning_flops.types import Uncounted as NewUncounted

    assert (RawCount, Uncounted) == (NewRawCount, NewUncounted)


def test_no_module_imports_a_private_name_of_another_lightning_flops_module() -> None:
    # train_step imported the torch counter's private _KernelWatch/_Recorder: the engine has a public API now
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, names in _imports(path):
            if module.startswith("lightning_flops") and not module.startswith("lightning_flops._compat"):
                folder = PACKAGE.parent.joinpath(*module.split("."))
                offenders += [
                    f"{path.name}: {module}.{name}"
                    for name in names
                    if name.startswith("_") and not (folder / f"{name}.py").exists()  # a module of a package is ok
                ]
    assert offenders == []


def test_formulas_read_no_argument_by_position() -> None:
    # each formula reads its arguments by schema name (call["offs"]), never args[16]
    source = (PACKAGE / "counters" / "formulas.py").read_text()
    tree = ast.parse(source)
    positional = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "args"
    ]
    assert positional == []


def test_every_exception_of_the_package_derives_from_flops_error() -> None:
    # errors.py: "Base of every exception lightning-flops raises itself"; a user catches FlopsError for all of ours.
    # Internal signals, caught inside the package, never reach the user: their own list, so a new one is a choice
    internal = {
        "lightning_flops.cli._common.CliError",  # the CLI's one-line error and exit status, caught in cli.main
        "lightning_flops.inputs.NoInput",  # the callback turns it into a warning or FlopsConfigError
        "lightning_flops.inputs.UserCodeFailed",  # carries the user's own exception, which is what is raised
        "lightning_flops.train_step._CountInPlace",  # a fallback inside train_step_flops
    }
    import importlib
    import inspect
    import pkgutil

    import lightning_flops
    from lightning_flops.errors import FlopsError

    outside = []
    for info in pkgutil.walk_packages(lightning_flops.__path__, "lightning_flops."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            ours = inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == info.name
            if ours and not issubclass(value, FlopsError) and f"{info.name}.{name}" not in internal:
                outside.append(f"{info.name}.{name}")
    assert outside == []
