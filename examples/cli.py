"""LightningCLI for the configs in ``configs/``, runnable from the repository root.

Usage::

    python examples/cli.py fit --config configs/cnn.yaml
    python examples/cli.py fit --config configs/attention.yaml --trainer.max_steps 2
    python examples/cli.py fit --config configs/cnn.yaml --print_config   # the resolved configuration

The configs name their classes by import path (``examples.lit_models.LitSmallCNN``); run as a script, this file puts
the repository root on ``sys.path`` so that jsonargparse can import them. Any LightningModule and LightningDataModule
can be given with ``--model`` / ``--data`` class paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch.cli import LightningCLI


def main(args: list[str] | None = None) -> None:
    """Run ``LightningCLI`` with any LightningModule / LightningDataModule given by class path.

    Args:
        args: command-line arguments without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    LightningCLI(args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
