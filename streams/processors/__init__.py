"""Pure domain processors: what each metric means, with no I/O. The Faust agents
(streams/agents.py) and the embedded runner feed them records and hand their output to
the sinks."""
