"""lightning-flops: trustworthy MACs, FLOPs and parameter counts for PyTorch Lightning.

Public names load lazily, so ``lightning_flops.FlopsReport`` and the ``compare`` CLI work without importing torch,
Lightning, thop or fvcore. FLOPs are always 2 x MACs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "CounterError",
    "CounterResult",
    "DiffRow",
    "Discrepancy",
    "FlopsConfigError",
    "FlopsError",
    "FlopsGapError",
    "FlopsMonitor",
    "FlopsReport",
    "Gap",
    "GenerationReport",
    "InputSpec",
    "OpTime",
    "ParamCount",
    "ParamDiffRow",
    "PartCount",
    "ReportDiff",
    "ReportFormatError",
    "TimingReport",
    "Uncounted",
    "count_positions",
    "diff_reports",
    "profile_generate",
    "profile_model",
    "train_step_flops",
]

_LOCATIONS = {
    "CounterError": "lightning_flops.errors",
    "FlopsConfigError": "lightning_flops.errors",
    "FlopsError": "lightning_flops.errors",
    "FlopsGapError": "lightning_flops.errors",
    "ReportFormatError": "lightning_flops.errors",
    "CounterResult": "lightning_flops.report",
    "FlopsReport": "lightning_flops.report",
    "Gap": "lightning_flops.report",
    "InputSpec": "lightning_flops.report",
    "ParamCount": "lightning_flops.report",
    "PartCount": "lightning_flops.report",
    "TimingReport": "lightning_flops.report",
    "OpTime": "lightning_flops.report",
    "Uncounted": "lightning_flops.report",
    "Discrepancy": "lightning_flops.explain",
    "DiffRow": "lightning_flops.explain",
    "ReportDiff": "lightning_flops.explain",
    "ParamDiffRow": "lightning_flops.explain",
    "diff_reports": "lightning_flops.explain",
    "profile_model": "lightning_flops.profiling",
    "GenerationReport": "lightning_flops.generation_report",
    "profile_generate": "lightning_flops.generation",
    "count_positions": "lightning_flops.inputs",
    "FlopsMonitor": "lightning_flops.callback",
    "train_step_flops": "lightning_flops.train_step",
}

if TYPE_CHECKING:
    from lightning_flops.callback import FlopsMonitor
    from lightning_flops.errors import CounterError, FlopsConfigError, FlopsError, FlopsGapError, ReportFormatError
    from lightning_flops.explain import DiffRow, Discrepancy, ParamDiffRow, ReportDiff, diff_reports
    from lightning_flops.generation import profile_generate
    from lightning_flops.generation_report import GenerationReport
    from lightning_flops.inputs import count_positions
    from lightning_flops.profiling import profile_model
    from lightning_flops.report import (
        CounterResult,
        FlopsReport,
        Gap,
        InputSpec,
        OpTime,
        ParamCount,
        PartCount,
        TimingReport,
        Uncounted,
    )
    from lightning_flops.train_step import train_step_flops


def __getattr__(name: str) -> Any:
    if name not in _LOCATIONS:
        raise AttributeError(f"module 'lightning_flops' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LOCATIONS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
