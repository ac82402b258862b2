"""An agent that raises must not leave a zombie worker: the reason is recorded for
/ready and the process is scheduled to exit with status 70."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from common.supervision import CRASH_EXIT_STATUS, pipeline_checks
from streams.app import WorkerState, _supervised


async def test_crashing_agent_records_reason_and_schedules_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scheduled: list[tuple[float, Any, tuple[Any, ...]]] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(
        loop, "call_later", lambda delay, fn, *args: scheduled.append((delay, fn, args))
    )

    async def broken(stream: Any) -> None:
        raise ValueError("bad row")

    state = WorkerState()
    agent = _supervised(state, "plays", broken)
    with pytest.raises(ValueError, match="bad row"):
        await agent(None)

    assert state.crashed == {"plays": "ValueError: bad row"}
    assert [(fn, args) for _, fn, args in scheduled] == [(os._exit, (CRASH_EXIT_STATUS,))]


async def test_cancellation_is_not_a_crash() -> None:
    async def cancelled(stream: Any) -> None:
        raise asyncio.CancelledError

    state = WorkerState()
    with pytest.raises(asyncio.CancelledError):
        await _supervised(state, "events", cancelled)(None)
    assert state.crashed == {}


def test_ready_lists_every_pipeline_with_its_crash() -> None:
    assert pipeline_checks(("events", "services"), {"services": "ValueError: bad row"}) == {
        "pipeline:events": "ok",
        "pipeline:services": "crashed: ValueError: bad row",
    }
