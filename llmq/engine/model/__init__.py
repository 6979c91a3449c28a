"""The model: the decoder, its output head, KV cache and rope; the tokenizer; and the loaders
of checkpoints (GGUF, Hugging Face folders) and of llmq's own variant artifacts."""
