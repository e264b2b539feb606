"""LightningModules and synthetic DataModules around the reference models, for the examples and the LightningCLI config.

* :class:`LitSmallCNN` + :class:`SyntheticImages` -- :class:`~examples.models.SmallCNN` on random CIFAR-sized images.
* :class:`LitTinyAttention` + :class:`SyntheticTokens` -- :class:`~examples.models.TinyAttention` on random token ids.

Everything runs on CPU in seconds; the data is seeded, so runs are reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.nn.functional import conv2d
from torch.utils.data import DataLoader, TensorDataset

from examples.models import SmallCNN, TinyAttention

__all__ = ["LitSmallCNN", "LitTinyAttention", "SyntheticImages", "SyntheticTokens"]


class _Classifier(LightningModule):
    """Cross-entropy classification on ``(input, label)`` batches with SGD + momentum."""

    model: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model."""
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch
        loss = nn.functional.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        inputs, labels = batch
        logits = self(inputs)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_acc", accuracy)
        # TensorBoard's HPARAMS view lists the metrics declared with the run's hyperparameters: Lightning's own
        # `hp_metric` is one (FlopsMonitor declares it beside compute/*), so compute and quality share a row there
        self.log("hp_metric", accuracy)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class LitSmallCNN(_Classifier):
    """:class:`~examples.models.SmallCNN` as a LightningModule.

    Args:
        width: channels of the first conv (the second has ``2 * width``).
        num_classes: classes of the linear head.
        lr: SGD learning rate.
        size: image side, for ``example_input_array`` (one sample): Lightning's model summary counts its FLOPs
            there, FlopsMonitor on the batch; per sample they agree (docs/counting.md).

    Example::

        Trainer(max_steps=5, callbacks=[FlopsMonitor()]).fit(LitSmallCNN(), SyntheticImages())
    """

    def __init__(self, width: int = 16, num_classes: int = 10, lr: float = 0.05, size: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["size"])  # the data module's `size` is the hyperparameter
        self.model = SmallCNN(width=width, num_classes=num_classes)
        self.example_input_array = torch.zeros(1, 3, size, size)


class LitTinyAttention(_Classifier):
    """:class:`~examples.models.TinyAttention` (einsum attention, which thop does not count) as a LightningModule.

    Args:
        vocab: token vocabulary size.
        dim: model width.
        heads: attention heads.
        num_classes: classes of the linear head.
        lr: SGD learning rate.
        seq: tokens per sequence, for ``example_input_array`` (one sample), as in :class:`LitSmallCNN`.

    Example::

        Trainer(max_steps=5, callbacks=[FlopsMonitor()]).fit(LitTinyAttention(), SyntheticTokens())
    """

    def __init__(
        self, vocab: int = 100, dim: int = 32, heads: int = 4, num_classes: int = 4, lr: float = 0.05, seq: int = 16
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["seq"])  # the data module's `seq` is the hyperparameter
        self.model = TinyAttention(vocab=vocab, dim=dim, heads=heads, num_classes=num_classes)
        self.example_input_array = torch.zeros(1, seq, dtype=torch.long)


class _Synthetic(LightningDataModule):
    """A seeded training set and a held-out validation set of the same size, drawn from the same rule."""

    dataset: TensorDataset
    val_dataset: TensorDataset

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, batch_size=self.hparams.batch_size)


class SyntheticImages(_Synthetic):
    """Seeded images ``[3, size, size]``: noise filtered by a 3x3 filter bank of their class (a texture; one fixed
    random bank per class) plus noise, so a model can learn the labels and a validation accuracy means something.

    Args:
        batch_size: images per batch.
        samples: dataset length.
        size: image side.
        num_classes: label range.
        seed: generator seed.
    """

    def __init__(self, batch_size: int = 8, samples: int = 64, size: int = 32, num_classes: int = 10, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(seed)
        textures = torch.randn(num_classes, 3, 3, 3, 3, generator=generator) / 3  # one 3x3 filter bank per class
        sets = []
        for _ in range(2):  # training set, then validation set
            labels = torch.randint(0, num_classes, (samples,), generator=generator)
            noise = torch.randn(samples, 3, size + 2, size + 2, generator=generator)
            images = torch.stack([conv2d(n[None], textures[c])[0] for n, c in zip(noise, labels.tolist(), strict=True)])
            sets.append(TensorDataset(images + 0.5 * torch.randn(images.shape, generator=generator), labels))
        self.dataset, self.val_dataset = sets


class SyntheticTokens(_Synthetic):
    """Seeded token ids ``[seq]``: random, with a quarter of the positions holding a marker token of their class (the
    last ``num_classes`` ids), so a model can learn the labels.

    Args:
        batch_size: sequences per batch.
        samples: dataset length.
        seq: tokens per sequence.
        vocab: token id range.
        num_classes: label range.
        seed: generator seed.
    """

    def __init__(
        self,
        batch_size: int = 8,
        samples: int = 64,
        seq: int = 16,
        vocab: int = 100,
        num_classes: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(seed)
        sets = []
        for _ in range(2):  # training set, then validation set
            labels = torch.randint(0, num_classes, (samples,), generator=generator)
            tokens = torch.randint(0, vocab - num_classes, (samples, seq), generator=generator)
            marked = torch.rand(samples, seq, generator=generator) < 0.25
            tokens = torch.where(marked, (vocab - num_classes + labels)[:, None].expand(-1, seq), tokens)
            sets.append(TensorDataset(tokens, labels))
        self.dataset, self.val_dataset = sets
