"""Counter adapters: one per mechanism (thop hooks, fvcore JIT trace, torch dispatch), each returning MACs."""

from lightning_flops.counters.base import COUNTER_NAMES, get_counter

__all__ = ["COUNTER_NAMES", "get_counter"]
