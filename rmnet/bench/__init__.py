"""What the benchmarks share: the timing harness and the ResNet-50 baseline."""
