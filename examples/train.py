"""Train a small example model for a few CPU steps with ``FlopsMonitor`` and show where the TensorBoard logs are.

Usage::

    python examples/train.py --model attention --steps 20 --logdir runs
    tensorboard --logdir runs

    # the runs that the README's `lightning-flops compare runs` shows
    python examples/train.py --model cnn --width 8 --name cnn_w8
    python examples/train.py --model cnn --width 32 --name cnn_w32

``--model cnn`` trains :class:`~examples.models.SmallCNN` on synthetic images; ``--model attention`` trains
:class:`~examples.models.TinyAttention` (einsum attention: thop misses it, so FlopsMonitor flags the gap). Each run is
validated once after its last step (``val_acc``, also as ``hp_metric`` in TensorBoard's HPARAMS view beside the
``compute/*`` columns).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from examples.lit_models import LitSmallCNN, LitTinyAttention, SyntheticImages, SyntheticTokens
from lightning_flops import FlopsMonitor

MODELS = {
    "cnn": (LitSmallCNN, SyntheticImages),
    "attention": (LitTinyAttention, SyntheticTokens),
}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and train; the callback prints the report once, then this prints where the logs are."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn", help="example model to train")
    parser.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    parser.add_argument("--logdir", default="runs", help="TensorBoard log root (default runs)")
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="channels of the CNN's first conv (default 16) or the attention model's dim (default 32)",
    )
    parser.add_argument("--name", default=None, help="run name: logs go to LOGDIR/NAME/version_N (default: --model)")
    parser.add_argument(
        "--timing",
        type=int,
        default=0,
        metavar="N",
        help="also time N forwards and show where the time goes beside the MACs (FlopsMonitor(timing=N); default 0)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.width is not None and args.width < 1:
        parser.error("--width must be >= 1")
    if args.timing < 0:
        parser.error("--timing must be >= 0")

    seed_everything(0, verbose=False)
    module_cls, data_cls = MODELS[args.model]
    size = {} if args.width is None else {"width" if args.model == "cnn" else "dim": args.width}
    monitor = FlopsMonitor(timing=args.timing)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        check_val_every_n_epoch=None,  # validate once, after the last step: val_acc beside the compute
        val_check_interval=args.steps,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=TensorBoardLogger(args.logdir, name=args.name or args.model),
        callbacks=[monitor],
    )
    trainer.fit(module_cls(**size), data_cls())  # FlopsMonitor prints the report and where it wrote it
    print(f"\nTensorBoard logs: {trainer.log_dir}")
    print(f"  tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
