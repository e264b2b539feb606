"""Plain-PyTorch reference models with known, analytically checkable MACs.

Every model here is written from scratch (no hub weights, no torchvision import) so that tests and benchmarks
can compare counters against numbers that are known in advance:

* :func:`resnet50` -- torchvision-layout ResNet-50 v1.5: 4,089,184,256 conv+linear MACs at 1x3x224x224 and
  25,557,032 parameters.
* :func:`vit_b16` / :func:`vit` -- ViT-B/16 (86,567,656 parameters for 1000 classes) with a selectable attention
  implementation (``"sdpa"``, ``"manual"`` or ``"einsum"``).
* :class:`SmallCNN` / :func:`small_cnn_macs` -- a tiny CIFAR-sized CNN and its analytic MACs.
* :class:`TinyAttention` / :func:`tiny_attention_macs` -- a one-block einsum transformer over token ids.
* :class:`TransformerLM` / :func:`transformer_lm` / :func:`transformer_lm_macs` / :func:`transformer_lm_params` --
  a GPT-style decoder that can be built on the ``meta`` device at billions of parameters.

All ``*_macs`` helpers count multiply-accumulates of matrix products only (conv, linear, attention products), i.e.
exactly ``FlopCounterMode().get_total_flops() // 2``; normalisations, activations, pooling, softmax, embeddings and
bias additions are not counted.

Caveat (torch 2.13, checked): on CPU with real tensors ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which has no flop formula, so ``FlopCounterMode`` counts *zero*
for the attention products there. On the ``meta`` device SDPA falls back to the math path (two ``bmm``) and is
counted in full, causal or not. The ``"manual"`` and ``"einsum"`` attention modes are counted everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Attention",
    "Block",
    "Bottleneck",
    "ResNet",
    "SmallCNN",
    "TinyAttention",
    "TransformerLM",
    "ViT",
    "resnet50",
    "small_cnn_macs",
    "tiny_attention_macs",
    "transformer_lm",
    "transformer_lm_macs",
    "transformer_lm_params",
    "vit",
    "vit_b16",
]

ATTENTION_MODES = ("sdpa", "manual", "einsum")


# --------------------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck block (1x1 -> 3x3 with stride -> 1x1), torchvision module names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet built from :class:`Bottleneck` blocks, with torchvision's layout and module names."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, 3, H, W]`` to logits ``[B, num_classes]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50 v1.5 (stride on the 3x3 conv) with torchvision's module names.

    At ``1x3x224x224`` and 1000 classes: 4,089,184,256 conv+linear MACs and 25,557,032 parameters.
    """
    return ResNet((3, 4, 6, 3), num_classes=num_classes)


# --------------------------------------------------------------------------------------------------------- ViT
class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and a selectable product implementation.

    ``mode`` is ``"sdpa"`` (:func:`torch.nn.functional.scaled_dot_product_attention`), ``"manual"``
    (``softmax(q @ k^T * scale) @ v``) or ``"einsum"`` (both products via :func:`torch.einsum`).
    All three compute the same function and cost the same ``2 * N^2 * dim`` MACs per sample.
    """

    def __init__(self, dim: int, heads: int, mode: str = "sdpa", causal: bool = False, bias: bool = True) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads, self.head_dim, self.mode, self.causal = heads, dim // heads, mode, causal
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over ``x`` of shape ``[B, N, dim]``."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            if self.mode == "einsum":
                scores = torch.einsum("bhnd,bhmd->bhnm", q, k) * self.scale
            else:
                scores = (q @ k.transpose(-2, -1)) * self.scale
            if self.causal:
                mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            probs = scores.softmax(dim=-1)
            out = torch.einsum("bhnm,bhmd->bhnd", probs, v) if self.mode == "einsum" else probs @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(
        self, dim: int, heads: int, hidden: int, mode: str = "sdpa", causal: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, bias=bias)
        self.attn = Attention(dim, heads, mode=mode, causal=causal, bias=bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``[B, N, dim]``."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer (class token, learned position embedding, pre-norm blocks, linear head)."""

    def __init__(
        self,
        depth: int = 12,
        dim: int = 768,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        patch: int = 16,
        image_size: int = 224,
        num_classes: int = 1000,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size={image_size} is not divisible by patch={patch}")
        num_patches = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, num_patches + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        hidden = int(dim * mlp_ratio)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden, mode=attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, 3, image_size, image_size]`` to logits ``[B, num_classes]``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(
    depth: int = 12,
    dim: int = 768,
    heads: int = 12,
    mlp_ratio: float = 4.0,
    patch: int = 16,
    image_size: int = 224,
    num_classes: int = 1000,
    attention: str = "sdpa",
) -> nn.Module:
    """Build a :class:`ViT`; small settings (e.g. ``depth=2, dim=64, heads=4, patch=8, image_size=32``) suit tests."""
    return ViT(depth, dim, heads, mlp_ratio, patch, image_size, num_classes, attention)


def vit_b16(num_classes: int = 1000, image_size: int = 224, attention: str = "sdpa") -> nn.Module:
    """ViT-B/16: 12 blocks, width 768, 12 heads, MLP 3072; 86,567,656 parameters for 1000 classes at 224.

    MACs per 224x224 image: 17,563,828,224 with the attention products (``"manual"``/``"einsum"``, or SDPA on meta),
    of which 715,333,632 are ``q k^T`` and ``p v``; torch's counter reports 16,848,500,736 for ``"sdpa"`` on CPU.
    """
    return vit(12, 768, 12, 4.0, 16, image_size, num_classes, attention)


# -------------------------------------------------------------------------------------------------- Small CNN
class SmallCNN(nn.Module):
    """Tiny CIFAR-sized CNN: two conv-BN-ReLU stages (the second with stride 2), global pooling, linear head."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``[B, 3, H, W]`` to logits ``[B, num_classes]``."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def small_cnn_macs(batch: int, width: int = 16, num_classes: int = 10, size: int = 32) -> int:
    """Analytic conv+linear MACs of :class:`SmallCNN` on ``[batch, 3, size, size]``.

    With ``s2 = (size - 1) // 2 + 1`` (output side of the stride-2 conv)::

        conv1 = batch * width * size**2 * 3 * 9
        conv2 = batch * (2 * width) * s2**2 * width * 9
        fc    = batch * (2 * width) * num_classes

    e.g. 1x3x32x32 with the defaults: 442,368 + 1,179,648 + 320 = 1,622,336.
    """
    s2 = (size - 1) // 2 + 1
    conv1 = batch * width * size * size * 3 * 9
    conv2 = batch * 2 * width * s2 * s2 * width * 9
    fc = batch * 2 * width * num_classes
    return conv1 + conv2 + fc


# ---------------------------------------------------------------------------------------------- TinyAttention
class TinyAttention(nn.Module):
    """One-block transformer classifier over int64 token ids ``[B, T]`` with einsum attention."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, num_classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = Block(dim, heads, 4 * dim, mode="einsum")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids ``[B, T]`` to logits ``[B, num_classes]`` (mean-pooled over tokens)."""
        return self.head(self.block(self.embed(tokens)).mean(dim=1))


def tiny_attention_macs(
    batch: int, seq: int, vocab: int = 100, dim: int = 32, heads: int = 4, num_classes: int = 4
) -> int:
    """Analytic MACs of :class:`TinyAttention` on ``[batch, seq]`` token ids.

    Per token: ``qkv = 3*dim^2``, ``proj = dim^2``, ``mlp = 2 * dim * 4*dim``; the two einsums
    (``q k^T`` and ``p v``) cost ``heads * seq^2 * (dim/heads)`` each per sample, i.e. ``2 * seq^2 * dim``;
    the head costs ``dim * num_classes`` per sample. ``vocab`` and ``heads`` do not change the count
    (the embedding is a lookup). Total::

        batch * (seq * (3*dim^2 + dim^2 + 8*dim^2) + 2 * seq^2 * dim + dim * num_classes)
    """
    del vocab, heads  # documented for symmetry with the constructor; the count does not depend on them
    per_token = 3 * dim * dim + dim * dim + 2 * dim * 4 * dim
    return batch * (seq * per_token + 2 * seq * seq * dim + dim * num_classes)


# ---------------------------------------------------------------------------------------------- TransformerLM
class TransformerLM(nn.Module):
    """GPT-style causal decoder: token + learned position embeddings, pre-norm SDPA blocks, untied LM head.

    Linear layers and norms have no bias. Build big ones on the meta device: ``with torch.device("meta"): ...``.
    """

    def __init__(
        self,
        layers: int = 32,
        d_model: int = 4096,
        heads: int = 32,
        ffn: int | None = None,
        vocab: int = 32000,
        max_seq: int = 2048,
    ) -> None:
        super().__init__()
        ffn = 4 * d_model if ffn is None else ffn
        self.max_seq = max_seq
        self.embed = nn.Embedding(vocab, d_model)
        self.pos_embed = nn.Embedding(max_seq, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, heads, ffn, mode="sdpa", causal=True, bias=False) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model, bias=False)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids ``[B, T]`` (``T <= max_seq``) to next-token logits ``[B, T, vocab]``."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def transformer_lm(
    layers: int = 32,
    d_model: int = 4096,
    heads: int = 32,
    ffn: int | None = None,
    vocab: int = 32000,
    max_seq: int = 2048,
) -> TransformerLM:
    """Build a :class:`TransformerLM` (``ffn`` defaults to ``4 * d_model``).

    The defaults give 6,713,249,792 parameters (see :func:`transformer_lm_params`);
    ``layers=40`` gives 8,323,928,064 (an "8B" model).
    """
    return TransformerLM(layers, d_model, heads, ffn, vocab, max_seq)


def transformer_lm_macs(
    batch: int, seq: int, layers: int = 32, d_model: int = 4096, ffn: int | None = None, vocab: int = 32000
) -> int:
    """Analytic MACs of a :class:`TransformerLM` forward on ``[batch, seq]`` token ids.

    Per token and layer: ``qkv = 3*d^2``, ``out = d^2``, ``ffn = 2*d*ffn`` and attention ``2*seq*d``
    (``q k^T`` plus ``p v``, counted in full although the mask is causal, as torch's counter does);
    plus the LM head ``d*vocab`` per token (matches ``FlopCounterMode`` on meta; on CPU torch does not count
    SDPA, see the module docstring). Total::

        batch * seq * (layers * (4*d^2 + 2*d*ffn + 2*seq*d) + d*vocab)
    """
    ffn = 4 * d_model if ffn is None else ffn
    per_layer = 4 * d_model * d_model + 2 * d_model * ffn + 2 * seq * d_model
    return batch * seq * (layers * per_layer + d_model * vocab)


def transformer_lm_params(
    layers: int = 32, d_model: int = 4096, ffn: int | None = None, vocab: int = 32000, max_seq: int = 2048
) -> int:
    """Analytic parameter count of a :class:`TransformerLM` (bias-free linears and norms, untied head).

    ``layers * (4*d^2 + 2*d*ffn + 2*d) + 2*vocab*d + max_seq*d + d``.
    """
    ffn = 4 * d_model if ffn is None else ffn
    per_layer = 4 * d_model * d_model + 2 * d_model * ffn + 2 * d_model
    return layers * per_layer + 2 * vocab * d_model + max_seq * d_model + d_model
