"""Numbered, forward-only ClickHouse migrations: `vNNNN_<name>.py`, each exposing
`statements(caps) -> list[str]`. See sinks/migrate.py for how they are applied."""
