"""Offline tools that build model variants: calibration, fidelity, pruning, reconstruction,
distillation, smoothing, vocabulary pruning and head surgery. Only ``llmq model optimize``
and ``eval`` (llmq/variants) and the benchmarks use them; a serving worker never imports
this package (tests/test_layering.py checks)."""
