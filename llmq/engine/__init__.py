"""The model library. Pure PyTorch: knows nothing of Celery, SQL or HTTP, and of the rest of
llmq only the request contract. Its rooms say what runs when:

- the runtime, here at the root: the engine and its loop, the scheduler (torch-free), the
  runner, generation requests and results, sampling, penalties, constrained decoding,
  stops, and the configs;
- ``model/``: the decoder, head, KV cache, rope, tokenizer, checkpoint and artifact loaders;
- ``kernels/``: linear layers of every precision, the native extension, kernel timing;
- ``host/``: process set-up, threads, memory, CPU and device detection;
- ``compress/``: the offline tools that build variants, never loaded by a serving worker.

Import each name from the module that defines it (``llmq.engine.engine.Engine``); call
``llmq.engine.host.process.configure_process`` once before running a model."""
