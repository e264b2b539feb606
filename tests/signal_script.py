"""A fit whose first forward runs for up to 30 s of torch operators, launched by ``tests/test_callback_signals.py``.

``python tests/signal_script.py ROOT MONITOR``: ``MONITOR`` is ``1`` for ``FlopsMonitor()``, ``0`` for none. The
first forward anywhere (with the monitor: the profile's, on its own thread; without: the first training step's)
writes ``ROOT/started`` and then keeps running ``tanh`` until the test signals the process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from lightning_flops import FlopsMonitor
from tests.lit_helpers import LinearStack, RandomDataModule, make_trainer


class SlowFirstForward(LinearStack):
    """:class:`LinearStack` whose first forward (while ``started`` does not exist) takes 30 s of operators."""

    def __init__(self, started: Path) -> None:
        super().__init__()
        self.started = str(started)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        started = Path(self.started)
        if not started.exists():
            started.write_text("forward started\n")
            end, y = time.monotonic() + 30, x
            while time.monotonic() < end:  # torch operators all along, through any dispatch mode
                y = torch.tanh(y)
        return self.net(x)


def main(root: Path, monitor: bool) -> None:
    callbacks = [FlopsMonitor()] if monitor else []
    trainer = make_trainer(root, callbacks, max_steps=2)
    trainer.fit(SlowFirstForward(root / "started"), RandomDataModule())


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "1")
