"""Funnel definitions (SPEC §4, §5) and the one meaning of "an event matches a step".

A funnel is 2..10 steps and a window in seconds. A step is an event type plus optional
equality filters on props. Predefined funnels come from `QUIP_FUNNELS_FILE`, read with
`load_funnels`; ad-hoc funnels arrive in API requests and use the same `FunnelStep`.

Config file format: JSON (`.json`) or TOML (`.toml`), chosen by the extension; both are
read with the standard library and msgspec only (YAML would need PyYAML, a dev-only
dependency). Both hold one top-level key, `funnels`, a list of definitions; see
`deploy/funnels.example.toml`. Every definition applies to every project.

Prop filters follow ClickHouse's `visitParam*` functions, which are the only JSON
functions clickhouse-server 18.16 has, so that the live processor and the ad-hoc SQL agree:

- the key is the *first occurrence of that key anywhere in the props, in document order*,
  nested objects and arrays included (`{"meta": {"hand": "l"}, "hand": "r"}` has
  hand = "l"); keys that also appear nested are best avoided in filters;
- a string filter matches a JSON string with the same text; a bool filter matches only
  JSON `true`/`false`; a number filter matches a JSON number (never a string or a bool)
  that is equal as a float64 (`1`, `1.0` and `1e0` are all 1). Integer filter values are
  limited to ±2**53 so float64 comparison is exact;
- a missing key, `null`, an object or an array never matches.

Errors: `load_funnels` raises `FunnelConfigError` (a ValueError) naming the file and the
offending field; decoding a `FunnelStep` or `FunnelDefinition` yourself raises
`msgspec.ValidationError`.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

DAY_MS: Final = 86_400_000

# URL-safe: a name is a path segment of GET /v1/funnels/{name}.
SLUG_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# SPEC §2's event type syntax.
EVENT_TYPE_PATTERN: Final = r"^[a-z][a-z0-9_.]{0,63}$"
# Keys travel into SQL as string parameters; the pattern keeps them to characters that a
# JSON serializer never escapes, which visitParam's literal key search relies on.
PROP_KEY_PATTERN: Final = r"^[A-Za-z0-9_.$-]{1,64}$"

MIN_STEPS: Final = 2
MAX_STEPS: Final = 10
# clickhouse-server 18.16 keeps windowFunnel timestamps in an Int32; the ad-hoc query
# feeds it milliseconds relative to a chunk start, so window + chunk must stay below
# 2**31 ms (24.8 days). Two weeks leaves chunks of 10 days (sinks/queries/funnels.py).
MAX_WINDOW_SECONDS: Final = 14 * 86_400
MAX_EXACT_INTEGER: Final = 2**53

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_PATTERN)]
EventType = Annotated[str, msgspec.Meta(pattern=EVENT_TYPE_PATTERN)]
PropKey = Annotated[str, msgspec.Meta(pattern=PROP_KEY_PATTERN)]
PropValue = str | int | float | bool
WindowSeconds = Annotated[int, msgspec.Meta(gt=0, le=MAX_WINDOW_SECONDS)]

_MISSING: Final = object()


class FunnelConfigError(ValueError):
    """The funnels file cannot be used; the message names the file and the field."""


def find_prop(props: Any, key: str) -> Any:
    """The value of the first `key` in `props` in document order, at any depth (as
    visitParamExtractRaw finds it in the serialized JSON), or `_MISSING`."""
    # Props are decoded JSON: dicts and lists, tested as such (an ABC test costs more
    # than the rest of a funnel step's match).
    if isinstance(props, dict):
        for name, value in props.items():
            if name == key:
                return value
            if isinstance(value, dict | list):
                found = find_prop(value, key)
                if found is not _MISSING:
                    return found
    elif isinstance(props, list):
        for item in props:
            if isinstance(item, dict | list):
                found = find_prop(item, key)
                if found is not _MISSING:
                    return found
    return _MISSING


def prop_equals(value: Any, expected: PropValue) -> bool:
    """Typed equality of one extracted prop value and a filter value (module docstring)."""
    if isinstance(expected, bool):
        return value is expected
    if isinstance(expected, str):
        return isinstance(value, str) and value == expected
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return float(value) == float(expected)
    except OverflowError:
        return False


class FunnelStep(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step: an event type, optionally with equality filters on its props."""

    event: EventType
    where: dict[PropKey, PropValue] = {}

    def __post_init__(self) -> None:
        for key, value in self.where.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"where.{key}: numbers must be finite")
            if (
                isinstance(value, int)
                and not isinstance(value, bool)
                and abs(value) > MAX_EXACT_INTEGER
            ):
                raise ValueError(f"where.{key}: integers must be within ±2**53")

    def matches(self, event_type: str, props: Mapping[str, Any]) -> bool:
        if event_type != self.event:
            return False
        for key, expected in self.where.items():
            if not prop_equals(find_prop(props, key), expected):
                return False
        return True


class FunnelDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A predefined funnel. `fingerprint` identifies the steps and window: rows written
    for an older version of a definition with the same name are not read back."""

    name: Slug
    steps: Annotated[list[FunnelStep], msgspec.Meta(min_length=MIN_STEPS, max_length=MAX_STEPS)]
    window_seconds: WindowSeconds

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def fingerprint(self) -> str:
        return definition_fingerprint(self.steps, self.window_seconds)


def definition_fingerprint(steps: list[FunnelStep], window_seconds: int) -> str:
    canonical = msgspec.json.encode([steps, window_seconds], order="sorted")
    return hashlib.sha256(canonical).hexdigest()[:16]


def check_funnel(steps: list[FunnelStep], window_seconds: int) -> None:
    """Raise ValueError unless the steps and window form a valid funnel (the bounds a
    FunnelDefinition enforces); for callers holding loose steps, e.g. ad-hoc queries."""
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise ValueError(f"a funnel has {MIN_STEPS} to {MAX_STEPS} steps, got {len(steps)}")
    if not all(isinstance(step, FunnelStep) for step in steps):
        raise ValueError("steps must be FunnelStep values")
    if (
        isinstance(window_seconds, bool)
        or not isinstance(window_seconds, int)
        or not 0 < window_seconds <= MAX_WINDOW_SECONDS
    ):
        raise ValueError(
            f"window_seconds must be an integer in 1..{MAX_WINDOW_SECONDS}, got {window_seconds!r}"
        )


class FunnelsFile(msgspec.Struct, forbid_unknown_fields=True):
    funnels: list[FunnelDefinition]


def parse_funnels(data: bytes, fmt: str, source: str = "<funnels>") -> list[FunnelDefinition]:
    """Decode a funnels document (`fmt` "json" or "toml"); raise FunnelConfigError."""
    try:
        if fmt == "json":
            document = msgspec.json.decode(data, type=FunnelsFile)
        elif fmt == "toml":
            document = msgspec.convert(tomllib.loads(data.decode()), FunnelsFile)
        else:
            raise FunnelConfigError(f"{source}: unknown format {fmt!r}: use .json or .toml")
    except (msgspec.DecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FunnelConfigError(f"{source}: {exc}") from exc
    seen: set[str] = set()
    for definition in document.funnels:
        if definition.name in seen:
            raise FunnelConfigError(f"{source}: funnel name {definition.name!r} is used twice")
        seen.add(definition.name)
    return document.funnels


def load_funnels(path: Path | str) -> list[FunnelDefinition]:
    """Read `QUIP_FUNNELS_FILE`. The format follows the extension (.json or .toml)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("json", "toml"):
        raise FunnelConfigError(
            f"{path}: unsupported extension {path.suffix!r}: use .json or .toml"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FunnelConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_funnels(data, fmt, str(path))


# The derived table the FunnelsProcessor writes and predefined_funnel reads
# (sinks/migrations/v0004_funnels.py); user_hash is computed by the server.
PROGRESS_TABLE: Final = "funnel_progress"
PROGRESS_COLUMNS: Final = ("project", "funnel", "definition", "user_id", "start_day", "level")
