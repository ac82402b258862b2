"""JSON nesting bounds (ingest/nesting.py): pruning text a decoder refused for its depth,
and the depth check of decoded props."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from ingest.nesting import MAX_PARSE_DEPTH, NestingTooDeep, nesting_exceeds, prune_nesting


@pytest.mark.parametrize(
    ("text", "keep", "pruned"),
    [
        pytest.param(b'{"a":[1,{"b":[[2]]}]}', 3, b'{"a":[1,{"b":null}]}', id="object value"),
        pytest.param(b"[[[[1]]],[2]]", 2, b"[[null],[2]]", id="array items"),
        pytest.param(b"[ [ [\n[ 1 ] ] ] ]", 2, b"[ [ null ] ]", id="whitespace inside runs"),
        pytest.param(b'[["[[[{"],"]]"]', 2, b'[["[[[{"],"]]"]', id="brackets in strings"),
        pytest.param(b'[["a\\"[[",[[1]]]]', 2, b'[["a\\"[[",null]]', id="escaped quote"),
        pytest.param(b"[[1],[2]]", 2, b"[[1],[2]]", id="nothing past keep"),
    ],
)
def test_prune_nesting(text: bytes, keep: int, pruned: bytes) -> None:
    assert prune_nesting(text, keep=keep) == pruned


def test_pruned_deep_text_decodes_and_keeps_its_shallow_parts() -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    text = b'{"events":[{"id":"x","props":' + deep + b'},{"id":"y"}]}'
    with pytest.raises(RecursionError):
        msgspec.json.decode(text)

    document = msgspec.json.decode(prune_nesting(text))

    assert [event["id"] for event in document["events"]] == ["x", "y"]
    assert nesting_exceeds(document["events"][0]["props"], 32)


def test_unclosed_deep_text_stays_invalid() -> None:
    text = b'{"a":' + b"[" * 100
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(prune_nesting(text, keep=10))


@pytest.mark.parametrize(
    ("levels", "refused"),
    [
        pytest.param(MAX_PARSE_DEPTH, False, id="at the limit"),
        pytest.param(MAX_PARSE_DEPTH + 1, True, id="one level past it"),
    ],
)
def test_parse_depth_limit(levels: int, refused: bool) -> None:
    text = b"[" * levels + b"]" * levels
    if refused:
        with pytest.raises(NestingTooDeep):
            prune_nesting(text)
    else:
        assert msgspec.json.decode(prune_nesting(text)) is not None


@pytest.mark.parametrize(
    ("value", "limit", "exceeds"),
    [
        pytest.param({"a": {"b": [1]}}, 3, False, id="three levels, limit 3"),
        pytest.param({"a": {"b": [1]}}, 2, True, id="three levels, limit 2"),
        pytest.param({}, 1, False, id="empty object is one level"),
        pytest.param({}, 0, True, id="limit 0"),
        pytest.param("text", 0, False, id="a scalar has no levels"),
        pytest.param([1, [2], {"x": [[3]]}], 3, True, id="deepest branch counts"),
    ],
)
def test_nesting_exceeds(value: Any, limit: int, exceeds: bool) -> None:
    assert nesting_exceeds(value, limit) is exceeds
