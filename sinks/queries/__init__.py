"""Read-side SQL for the SPEC §4/§5 metrics; the same text runs on chDB and on servers."""
