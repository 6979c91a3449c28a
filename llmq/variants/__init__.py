"""Model variants: the registry of names to artifacts (built-in models, imported checkpoints,
optimized variants), and building, measuring and evaluating variants."""
