"""The local backend of `quip up`: the on-disk bus as the source, SQLite as the state
backend (positions kept with the state), the bus's dead-letter records."""
