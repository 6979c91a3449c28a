"""The model library: load, tokenize, schedule, run, sample, prune, quantize, artifacts. Pure
PyTorch: knows nothing of Celery, SQL or HTTP, and of the rest of llmq only the request
contract. Import each name from the module that defines it (``llmq.engine.engine.Engine``);
call ``llmq.engine.setup.configure_process`` once before running a model."""
