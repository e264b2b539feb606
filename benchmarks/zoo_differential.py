"""The reference's rule on every ``transformers`` architecture that builds tiny from its config: the torch counter's
MACs against stock FlopCounterMode / 2 plus the terms of the formulas we add, computed independently
(``tests/differential.py``). Not part of the test suite (minutes); ``tests/test_differential.py`` runs a sample.

Usage::

    PYTHONPATH=$PWD python benchmarks/zoo_differential.py [--limit N] [--only TYPE ...] [--device meta|model]

Prints one line per architecture (equal / above by our formulas / below / skipped: why) and the totals.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N model types only")
    parser.add_argument("--only", nargs="*", default=None, help="these model types only")
    parser.add_argument("--after", default=None, help="start after this model type (resume a run)")
    parser.add_argument("--device", choices=("meta", "model"), default="meta", help="where the torch counter counts")
    options = parser.parse_args()

    import torch
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    import lightning_flops as lf
    from tests.differential import reference_sides
    from tests.hf_zoo import build

    types = options.only or sorted(CONFIG_MAPPING_NAMES)
    if options.after:
        types = [t for t in types if t > options.after]
    types = types[: options.limit] if options.limit else types
    totals = {"equal": 0, "above by our formulas": 0, "below": 0, "different": 0, "failed": 0, "skipped": 0}
    for model_type in types:
        start = time.perf_counter()
        try:
            model, example = build(model_type)
        except Exception as err:
            totals["skipped"] += 1
            print(f"{model_type:32s} skipped: {type(err).__name__}: {str(err)[:80]}", flush=True)
            continue
        stock, added, kernels = reference_sides(lambda m=model, e=example: m(**e))
        expected = (stock + added) // 2
        device = None if options.device == "meta" else "model"
        result = lf.profile_model(model, example, counters=("torch",), device=device).counters["torch"]
        seconds = time.perf_counter() - start
        if not result.ok:
            verdict = "failed"
        elif result.macs == expected:
            verdict = "above by our formulas" if added else "equal"
        else:
            verdict = "below" if result.macs < expected else "different"
        totals[verdict] += 1
        extra = f" added {kernels}" if added else ""
        print(f"{model_type:32s} {verdict:22s} ours {result.macs} expected {expected} (stock/2 {stock // 2})"
              f"{extra} {seconds:.1f}s", flush=True)  # fmt: skip
        del model
        torch.set_grad_enabled(True)
    print("totals:", totals)
    return 0 if totals["below"] == totals["different"] == totals["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
