"""``lightning-flops profile TARGET --input SHAPE...``: build a model, profile it on a random input, print the report.

torch and the counters are imported only when the command runs, never when the parser is built.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib
import importlib.util
import io
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_flops.cli._common import PROG, CliError, atomic_write, check_output
from lightning_flops.counters.base import COUNTER_NAMES
from lightning_flops.errors import FlopsConfigError

if TYPE_CHECKING:
    from lightning_flops.generation_report import GenerationReport
    from lightning_flops.report import FlopsReport

NAME = "profile"
#: Element types accepted by ``profile --input DTYPE:SHAPE`` (names of ``torch`` dtypes).
INPUT_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)

#: Most elements ``profile`` allocates for its random inputs on a real device (400 MB as float32); above it, it
#: asks for ``--device meta``, where tensors have shapes and no memory.
MAX_INPUT_ELEMENTS = 10**8
#: torch sizes are int64: no dimension and no element count may reach ``2**63``, on any device.
_MAX_SIZE = 2**63 - 1


@dataclass(frozen=True)
class InputShape:
    """One ``--input``: dtype name and shape, e.g. ``int64:1,128`` -> ``InputShape("int64", (1, 128))``."""

    dtype: str
    shape: tuple[int, ...]


def parse_shape(text: str) -> InputShape:
    """Parse ``"2,3,224,224"`` (float32) or ``"DTYPE:1,128"``; raise :class:`CliError` naming the bad string."""
    dtype, sep, dims = text.rpartition(":")
    dtype = dtype.strip() if sep else "float32"
    if dtype not in INPUT_DTYPES:
        raise CliError(f"`--input` {text!r}: unknown dtype {dtype!r}; use one of {', '.join(INPUT_DTYPES)}")
    parts = [p.strip() for p in dims.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CliError(
            f"`--input` {text!r} is not a shape: give sizes >= 1 separated by commas, e.g. 2,3,224,224 or int64:1,128"
        )
    shape = tuple(int(p) for p in parts)
    if math.prod(shape) > _MAX_SIZE:
        raise CliError(f"`--input` {text!r} has more than 2**63 - 1 elements: torch cannot index it on any device")
    return InputShape(dtype, shape)


def check_input_size(shapes: Sequence[InputShape], device: str) -> None:
    """Refuse random inputs too large to allocate on a real device (:data:`MAX_INPUT_ELEMENTS` in all); meta is free.

    Args:
        shapes: the parsed ``--input`` values.
        device: ``"cpu"`` or ``"meta"``.
    """
    elements = sum(math.prod(spec.shape) for spec in shapes)
    if device != "meta" and elements > MAX_INPUT_ELEMENTS:
        raise CliError(
            f"`--input` asks for {elements:,} elements, more than the {MAX_INPUT_ELEMENTS:,} that profile allocates on "
            "--device cpu; pass --device meta to count with shapes only (no memory), or give a smaller input"
        )


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["layers=40", "attention=einsum"]`` -> ``{"layers": 40, "attention": "einsum"}`` (literals, else str)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"`--kwargs` items must be NAME=VALUE, got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value
    return kwargs


def _import_target(target: str) -> Any:
    """Resolve ``module.path:Name`` or ``path/to/file.py:Name`` (``Name`` may be dotted) to the object."""
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr:
        raise CliError(f"`TARGET` must be module.path:Name or path/to/file.py:Name, got {target!r}")
    if location.endswith(".py") or "/" in location or os.sep in location:
        path = Path(location)
        if not path.is_file():
            raise CliError(f"cannot import `{target}`: file {location!r} does not exist")
        module_name = f"_lightning_flops_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise CliError(f"cannot import `{target}`: {location!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        sys.modules[module_name] = module
        try:
            _guarded_import(target, location, lambda: spec.loader.exec_module(module))
        except CliError:
            sys.modules.pop(module_name, None)
            raise
    else:
        if os.getcwd() not in sys.path:  # the console script does not put the working directory on sys.path
            sys.path.insert(0, os.getcwd())
        module = _guarded_import(target, location, lambda: importlib.import_module(location))
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise CliError(f"cannot import `{target}`: {location} has no attribute {attr!r}") from err
    return obj


def _guarded_import(target: str, location: str, load: Callable[[], Any]) -> Any:
    """Run ``load()`` (the import of TARGET's module) so that whatever it does at import time is reported as such.

    The module sees ``sys.argv == [location]`` (a command line parsed at import time finds no options of ours), what
    it prints (stdout and stderr) is held back and shown again on stderr only on success (stdout holds the report and
    nothing else), and an exception or a ``sys.exit()`` (any status: exit 0 must not pass for a profile) becomes one
    :class:`CliError` line that says it came from importing TARGET.
    """
    argv, held = sys.argv, io.StringIO()
    sys.argv = [location]
    try:
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            result = load()
    except SystemExit as exit_:
        last = next((line for line in reversed(held.getvalue().splitlines()) if line.strip()), "")
        said = f"; it printed: {last.strip()}" if last else ""
        raise CliError(
            f"cannot import `{target}`: importing {location} called sys.exit({exit_.code!r}){said} "
            '(code that runs a command line at import belongs under `if __name__ == "__main__":`)'
        ) from None
    except Exception as err:
        raise CliError(
            f"cannot import `{target}`: {type(err).__name__}: {err} (raised while importing {location})"
        ) from err
    finally:
        sys.argv = argv
    sys.stderr.write(held.getvalue())
    return result


def parse_parts(items: Sequence[str]) -> dict[str, list[str]]:
    """``["visual=backbone,neck", "head=head"]`` -> ``{"visual": ["backbone", "neck"], "head": ["head"]}``: the
    ``parts=`` argument of ``profile_model`` (qualified ``named_modules()`` names, checked against the model there)."""
    parts: dict[str, list[str]] = {}
    for item in items:
        label, sep, names = item.partition("=")
        modules = [name.strip() for name in names.split(",")]
        if not sep or not label.strip() or not all(modules):
            raise CliError(f"`--parts` items must be LABEL=MODULE[,MODULE...], got {item!r}")
        if label.strip() in parts:
            raise CliError(f"`--parts`: label {label.strip()!r} is given twice; list all its modules in one item")
        parts[label.strip()] = modules
    return parts


def parse_custom_ops(items: Sequence[str], model: Any) -> dict[type, float]:
    """``["nn.LayerNorm=4", "MyBlock=10"]`` -> ``{nn.LayerNorm: 4.0, MyBlock: 10.0}``: the number form of
    ``profile_model``'s ``custom_ops`` (MACs per element of the module's output).

    ``TYPE`` is ``nn.NAME`` / ``torch.nn.NAME`` (a torch module class), ``package.module:NAME`` (any importable
    class), or a bare class name of one of the model's own modules (``MyBlock``). A type the model does not use is an
    error: a rule that matches nothing is a typo more often than not.
    """
    from torch import nn

    used = {type(module) for module in model.modules()}
    rules: dict[type, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not sep or not name or not math.isfinite(rate) or rate < 0:
            raise CliError(
                f"`--custom-op` items must be TYPE=MACS_PER_OUTPUT_ELEMENT with a number >= 0 "
                f"(e.g. nn.LayerNorm=4), got {item!r}"
            )
        cls = _module_class(name, used, nn)
        if cls not in used:
            raise CliError(
                f"`--custom-op {item}`: {type(model).__name__} has no {_class_name(cls)} module; its module types "
                f"are {', '.join(sorted({_class_name(t) for t in used}))}"
            )
        rules[cls] = int(rate) if rate.is_integer() else rate
    return rules


def _class_name(cls: type) -> str:
    """``nn.LayerNorm`` for torch's module classes, ``package.module.Name`` for others."""
    from torch import nn

    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _module_class(name: str, used: set[type], nn: Any) -> type:
    """The ``nn.Module`` subclass that ``--custom-op``'s ``TYPE`` names (see :func:`parse_custom_ops`)."""
    if ":" in name:
        location, _, attr = name.partition(":")
        try:
            cls: Any = importlib.import_module(location)
            for part in attr.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError) as err:
            raise CliError(f"`--custom-op`: cannot import {name!r}: {err}") from None
    elif name.startswith(("nn.", "torch.nn.")):
        attr = name.rpartition(".")[2]
        cls = getattr(nn, attr, None)
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            known = [n for n in dir(nn) if isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module)]
            close = difflib.get_close_matches(attr, known, n=1)
            hint = f"; did you mean `nn.{close[0]}`?" if close else ""
            raise CliError(f"`--custom-op`: torch.nn has no module class {attr!r}{hint}")
    else:
        found = {t for t in used if name in (t.__name__, t.__qualname__)}
        if len(found) != 1:
            names = sorted({t.__name__ for t in used})
            if found:
                listed = ", ".join(sorted(_class_name(t) for t in found))
                raise CliError(f"`--custom-op`: {name!r} names {len(found)} classes ({listed}); give one as nn.NAME "
                               "or package.module:NAME")  # fmt: skip
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f" (its module types: {', '.join(names)})"
            raise CliError(f"`--custom-op`: the model has no module of a class named {name!r}{hint}")
        cls = found.pop()
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CliError(f"`--custom-op`: {name!r} is not an nn.Module subclass")
    return cls


def _build_model(target: str, kwargs: dict[str, Any], device: str) -> Any:
    """Call the class or factory named by ``target`` with ``kwargs`` (inside ``torch.device("meta")`` for meta)."""
    import torch
    from torch import nn

    factory = _import_target(target)
    if not callable(factory):
        raise CliError(f"`{target}` must name an nn.Module class or a function returning one, got {factory!r}")
    try:
        if device == "meta":
            with torch.device("meta"):
                model = factory(**kwargs)
        else:
            model = factory(**kwargs)
    except SystemExit as exit_:  # sys.exit() in a factory is not a model: never a silent exit 0
        raise CliError(f"building `{target}` with {kwargs} called sys.exit({exit_.code!r})") from None
    except Exception as err:
        raise CliError(f"building `{target}` with {kwargs} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise CliError(f"`{target}` must build a torch.nn.Module, it returned {type(model).__name__}")
    return model


def make_inputs(model: Any, shapes: Sequence[InputShape], device: str, seed: int = 0) -> list[Any]:
    """Random tensors of ``shapes``: floats from N(0, 1); integers below the first ``nn.Embedding``'s
    ``num_embeddings`` (0 when the model has none); on ``device="meta"`` only shapes and dtypes exist."""
    import torch
    from torch import nn

    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    high = embedding.num_embeddings if embedding is not None else 1
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in shapes:
        dtype = getattr(torch, spec.dtype)
        if device == "meta":
            tensors.append(torch.empty(spec.shape, dtype=dtype, device="meta"))
        elif dtype == torch.bool:
            tensors.append(torch.randint(0, 2, spec.shape, generator=generator).bool())
        elif dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.randint(0, high, spec.shape, generator=generator, dtype=dtype))
    return tensors


def _profile(args: argparse.Namespace, kwargs: dict[str, Any], shapes: Sequence[InputShape]) -> Any:
    """Build TARGET and profile it on random inputs of ``shapes``; a configuration error becomes a :class:`CliError`."""
    import lightning_flops

    model = _build_model(args.target, kwargs, args.device)
    custom_ops = parse_custom_ops(args.custom_op, model) if args.custom_op else None
    inputs = make_inputs(model, shapes, args.device)
    try:
        return lightning_flops.profile_model(
            model,
            inputs[0] if len(inputs) == 1 else tuple(inputs),
            counters=tuple(args.counters),
            limit=args.limit,
            flag_on=args.flag_on,
            mode=args.mode,
            device="meta" if args.device == "meta" else None,
            custom_ops=custom_ops,
            parts=parse_parts(args.parts) or None,
            timing=args.timing,
            moe_routing=getattr(args, "moe_routing", None),
        )
    except FlopsConfigError as err:
        raise CliError(str(err)) from err


def _check_generate(args: argparse.Namespace, shapes: Sequence[InputShape]) -> None:
    """``--generate N`` needs N >= 1, real weights and one integer ``--input`` (the prompt's token ids)."""
    if args.generate < 1:
        raise CliError(f"`--generate` must be an int >= 1 (new tokens per sample), got {args.generate}")
    if args.device == "meta":
        raise CliError("`--generate` runs the model's generate() on real weights: use --device cpu")
    if getattr(args, "timing", 0) or getattr(args, "parts", None) or getattr(args, "custom_op", None):
        raise CliError("`--generate` counts generate() as a whole: it takes no --timing, --parts or --custom-op")
    if len(shapes) != 1 or shapes[0].dtype not in ("int64", "int32") or len(shapes[0].shape) != 2:
        raise CliError("`--generate` takes one --input of token ids, e.g. --input int64:1,16 (batch, prompt length)")


def _generate(args: argparse.Namespace, kwargs: dict[str, Any], shapes: Sequence[InputShape]) -> Any:
    """Build TARGET and count ``generate()`` of ``args.generate`` new tokens on random prompt ids."""
    import lightning_flops

    model = _build_model(args.target, kwargs, args.device)
    (ids,) = make_inputs(model, shapes, args.device)
    try:
        return lightning_flops.profile_generate(model, ids, max_new_tokens=args.generate)
    except FlopsConfigError as err:
        raise CliError(str(err)) from err


def _emit(report: FlopsReport | GenerationReport, json_path: Path | None, force: bool) -> None:
    """Write ``report``'s JSON to ``json_path`` (atomically) when given, then print its Markdown on stdout."""
    if json_path is not None:
        text = report.to_json()
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"), force)
    print(report.to_markdown(), flush=True)
    if json_path is not None:
        print(f"{PROG}: wrote {json_path}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run ``profile``; returns the exit status (0, or 1 when every counter failed)."""
    shapes = [parse_shape(text) for text in args.input]
    check_input_size(shapes, args.device)
    kwargs = parse_kwargs(args.kwargs)
    if args.generate is not None:
        _check_generate(args, shapes)
        json_path = check_output(args.json, "--json", args.force) if args.json is not None else None
        with contextlib.redirect_stdout(sys.stderr):
            gen = _generate(args, kwargs, shapes)
        _emit(gen, json_path, args.force)
        return 0
    parse_parts(args.parts)  # bad items fail before the model is built
    if args.timing < 0:
        raise CliError(f"`--timing` must be an int >= 0 (plain forwards to time; 0: no timing), got {args.timing}")
    if args.timing and args.device == "meta":
        raise CliError("`--timing` needs real weights to time: use --device cpu (meta tensors have no data)")
    json_path = check_output(args.json, "--json", args.force) if args.json is not None else None
    with contextlib.redirect_stdout(sys.stderr):  # what the target prints goes to stderr: stdout is the report only
        report = _profile(args, kwargs, shapes)
    _emit(report, json_path, args.force)
    if not any(result.ok for result in report.counters.values()):
        print(f"{PROG}: every counter failed (see the report above)", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``profile`` sub-command to ``subparsers`` and return its parser.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="profile a model on a random input, without training",
        description="Build TARGET, profile it with lightning_flops.profile_model and print the report (per sample).",
    )
    parser.add_argument("target", metavar="TARGET", help="module.path:ClassOrFactory or path/to/file.py:name")
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="SHAPE",
        help="one per positional argument of forward: 2,3,224,224 (float32) or DTYPE:1,128 (e.g. int64 token ids, "
        "drawn below the first nn.Embedding's num_embeddings)",
    )
    parser.add_argument(
        "--kwargs", nargs="+", default=[], action="extend", metavar="NAME=VALUE", help="arguments of TARGET"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "meta"),
        default="cpu",
        help="cpu (default): real weights and random inputs; meta: build the model inside torch.device('meta') "
        "(no memory for weights or inputs) and count there",
    )
    parser.add_argument(
        "--counters",
        nargs="+",
        default=list(COUNTER_NAMES),
        metavar="NAME",
        help=f"counters to run, any of: {', '.join(COUNTER_NAMES)} (default: all; torch is the exact reference)",
    )
    parser.add_argument(
        "--mode",
        default="eval",
        metavar="MODE",
        help="eval (default: inference cost) or train (training-mode forward)",
    )
    parser.add_argument(
        "--limit", type=float, default=0.01, help="relative gap above which counters are flagged (default: 0.01 = 1%%)"
    )
    parser.add_argument("--flag-on", default="core", help="core (default: MAC core only) or total")
    parser.add_argument(
        "--parts",
        action="append",
        default=[],
        metavar="LABEL=MODULE[,MODULE...]",
        help="report a named part beside the total (repeatable), as profile_model(parts={LABEL: [MODULE, ...]}): "
        "qualified named_modules() names, e.g. visual=backbone,neck",
    )
    parser.add_argument(
        "--custom-op",
        action="append",
        default=[],
        metavar="TYPE=MACS",
        help="count every module of TYPE as MACS multiply-accumulates per element of its output, in every counter "
        "(repeatable), as profile_model(custom_ops={TYPE: MACS}); TYPE is nn.NAME, package.module:NAME or the "
        "class name of one of the model's modules, e.g. nn.LayerNorm=4",
    )
    parser.add_argument(
        "--timing",
        type=int,
        default=0,
        metavar="N",
        help="also time N plain forwards and split the time by module and operator (torch.profiler) beside the "
        "MACs: the report gains a 'where the time goes' table, as profile_model(timing=N) (default: 0, no timing)",
    )
    parser.add_argument(
        "--moe-routing",
        choices=("balanced",),
        help="balanced: on --device meta, where a mixture-of-experts router cannot run, give each expert "
        "tokens*top_k/num_experts rows (the total is exact for top-k routing), as profile_model(moe_routing=...)",
    )
    parser.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="count generate() of N new tokens per sample (greedy) instead of one forward: prefill and every decode "
        "step, as lightning_flops.profile_generate; --input is the prompt's token ids, e.g. int64:1,16",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON (atomically)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    return parser
