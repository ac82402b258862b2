"""The pipeline core: one small module per step (fetch, batch, decode, feed, store,
persist, commit) over the protocols of `protocols.py`; `pipeline.py` chains them and
states the contract; `build.py` wires the worker's and `quip up`'s pipelines."""
