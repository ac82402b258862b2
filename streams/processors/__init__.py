"""Pure domain processors: what each metric means, with no I/O. The pipeline core
(streams/runner/) feeds them records, in the worker and in `quip up` alike, and hands
their output to the sinks."""
