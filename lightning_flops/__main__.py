"""``python -m lightning_flops``: the ``lightning-flops`` command line."""

from __future__ import annotations

from lightning_flops.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
