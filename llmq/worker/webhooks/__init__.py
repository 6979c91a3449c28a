"""Webhooks: the ends of batches and pipeline runs, signed by the Standard Webhooks scheme
and sent at least once to their receivers (send.py: one attempt; deliver.py: announcing
ends, and the senders that retry over a day)."""
