"""The nightly summarization pipeline: documents in, one summary each out, map-reduce for the
long ones, through ordinary batches on the normal queues."""
