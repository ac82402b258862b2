"""Helpers the benchmark scripts share (typed, checked by mypy). The scripts run as
modules from the repository root: `.venv/bin/python -m benchmarks.<script>`."""
