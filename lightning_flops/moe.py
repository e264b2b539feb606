"""Mixture-of-experts routing on the meta device: an explicit assumption where routing cannot run, stated in reports.

On meta, a router's top-k gives shapes but no values, and torch's meta kernel of ``aten._grouped_mm`` (the fused
experts of Hugging Face MoE models) accepts bfloat16 only (torch 2.13: "Expected inputs of BF16 type"). With
``moe_routing="balanced"``, :class:`MetaRouting` answers a meta ``_grouped_mm`` itself with an empty output of the
right shape, and the groups (experts) are taken as balanced: each of the ``G`` experts gets ``M / G`` of the ``M``
rows (``tokens * top_k``). The MACs of top-k routing do not depend on the routing (every row meets exactly one
expert: ``M * K * N`` in all), so the total stays exact; only the split over experts (which experts a batch reads:
``min(M, G)`` of them) is assumed. It is a dispatch mode of the counting thread only: nothing process-wide.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_flops._compat import TorchDispatchMode
from lightning_flops.errors import FlopsConfigError

__all__ = ["MOE_ROUTINGS", "MetaRouting", "balanced_experts", "check_moe_routing"]

aten = torch.ops.aten

#: Values of ``profile_model(moe_routing=...)``: ``None`` (routing as it runs) or ``"balanced"`` (on meta).
MOE_ROUTINGS: tuple[str | None, ...] = (None, "balanced")

_GROUPED = tuple(getattr(aten, name) for name in ("_grouped_mm",) if hasattr(aten, name))


def check_moe_routing(value: Any) -> str | None:
    """``value`` when it is one of :data:`MOE_ROUTINGS`, else :class:`FlopsConfigError` naming the argument."""
    if value not in MOE_ROUTINGS or (value is not None and not isinstance(value, str)):
        raise FlopsConfigError(f"`moe_routing` must be None or 'balanced', got {value!r}")
    return value


def balanced_experts(rows: int, groups: int) -> int:
    """Experts that receive rows when ``rows`` are spread evenly over ``groups``: ``min(rows, groups)``."""
    return min(rows, groups)


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


class MetaRouting(TorchDispatchMode):
    """Runs a meta ``aten._grouped_mm`` (rows ``[M, K]`` x experts ``[G, K, N]``) under the routing assumption.

    ``routing="balanced"``: the output is an empty meta ``[M, N]`` tensor (any dtype; torch's meta kernel wants
    bfloat16); the counter above counts ``M * K * N`` MACs (meta group sizes are unknown: every row counts once).
    ``routing=None``: torch's kernel runs; when it refuses, the error says which option makes a meta count possible.
    Tensors on a real device are never touched.

    Args:
        routing: one of :data:`MOE_ROUTINGS`.

    Example::

        with MetaRouting("balanced"):
            meta_model(meta_ids)
    """

    def __init__(self, routing: str | None) -> None:
        super().__init__()
        self.routing = routing
        self.assumed = False  # whether a meta _grouped_mm ran under the assumption

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "overloadpacket", None) not in _GROUPED or not any(_is_meta(a) for a in args[:2]):
            return func(*args, **kwargs)
        a, b = args[0], args[1]
        if self.routing == "balanced" and a.dim() == 2 and b.dim() == 3:
            self.assumed = True
            dtype = kwargs.get("out_dtype") or a.dtype
            return torch.empty((a.shape[0], b.shape[2]), dtype=dtype, device="meta")
        try:
            return func(*args, **kwargs)
        except RuntimeError as err:
            raise RuntimeError(
                f"{err} (mixture-of-experts routing cannot run on the meta device: pass moe_routing='balanced' to "
                "count each expert with tokens*top_k/num_experts rows, the total being exact for top-k routing, or "
                "count on real weights)"
            ) from err
