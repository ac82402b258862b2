"""How event props are stored for filtering and breakdowns (SPEC §5.1): flattened to
dotted paths in parallel key/value arrays, Snuba's layout for Sentry tags.

- `props_keys` / `props_values`: every scalar leaf, its value as text (`prop_text`);
- `props_num_keys` / `props_num_values`: the numeric leaves (not booleans), as floats.
Nested objects become dotted paths (`{"a": {"b": 1}}` → `a.b`); a list is a leaf whose
text is its compact JSON; null leaves are left out (a null prop is not set). The raw JSON
stays in `props` as well, so nothing is lost. Depth is bounded by ingest (SPEC §2: 32).
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

# Tuples, not lists: the garbage collector stops tracking a tuple of strings or floats,
# while every list of every buffered row would be walked at each collection.
FlatProps = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[float, ...]]
_FLOAT_LIMIT: Final = 2**1023  # integers a Float64 holds (beyond: text only)


def prop_text(value: Any) -> str:
    """The text a scalar is compared by: true/false, integral numbers without a fraction
    (1.0 → "1"), other floats by their shortest repr, strings as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**63:
            return str(int(value))
        return repr(value)
    return str(value)


def is_number(value: Any) -> bool:
    """A finite number a Float64 holds (JSON integers may be of any size)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_FLOAT_LIMIT < value < _FLOAT_LIMIT
    return isinstance(value, float) and math.isfinite(value)


def flatten_props(props: dict[str, Any]) -> FlatProps:
    keys: list[str] = []
    values: list[str] = []
    num_keys: list[str] = []
    num_values: list[float] = []
    stack: list[tuple[str, dict[str, Any]]] = [("", props)]
    while stack:
        prefix, mapping = stack.pop()
        for key, value in mapping.items():
            # Most props are top-level strings: no new path string, one type test.
            path = prefix + key if prefix else key
            if type(value) is str:
                keys.append(path)
                values.append(value)
            elif isinstance(value, dict):
                stack.append((f"{path}.", value))
            elif value is None:
                continue
            elif isinstance(value, list):
                keys.append(path)
                values.append(msgspec.json.encode(value).decode())
            else:
                keys.append(path)
                values.append(prop_text(value))
                if is_number(value):
                    num_keys.append(path)
                    num_values.append(float(value))
    return tuple(keys), tuple(values), tuple(num_keys), tuple(num_values)
