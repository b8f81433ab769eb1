"""Redis transport: the streams of a run (keys, consumers, hand-off, admission,
backpressure), the resilient client and the embedded server."""
