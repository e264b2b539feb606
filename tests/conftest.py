"""Shared test settings: quiet third-party warnings, deterministic CPU threads."""

from __future__ import annotations

import os
import warnings

import torch

os.environ.setdefault("PYTHONHASHSEED", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
warnings.filterwarnings("ignore", message="distutils Version classes are deprecated")
