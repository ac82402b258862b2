"""What the pipeline core runs on: `kafka/` (the worker) and `local/` (`quip up`)."""
