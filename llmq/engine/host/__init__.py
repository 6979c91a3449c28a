"""The machine the engine runs on: the one process set-up call (threads, allocator,
compilation), compute threads, memory, and CPU and device detection."""
