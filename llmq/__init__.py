"""llmq: batch inference for language models."""
