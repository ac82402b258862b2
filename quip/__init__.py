"""Qui Pipeline: event-streaming analytics for VR telemetry."""

__version__ = "0.1.0"
