"""The HTTP front door (``llmq serve``): the OpenAI Files, Batches and completion APIs, with
keys, metrics and health checks, over the same service functions as the CLI. No torch."""
