"""Contracts shared by producers and consumers: topics and message schemas."""
