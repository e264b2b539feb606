"""Reference models used by the lightning-flops examples, tests and benchmarks."""
