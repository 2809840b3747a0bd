"""neuralflow benchmarks: capture overhead, the frame operation, transport, memory."""
