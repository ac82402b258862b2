"""The ingest admission bound (ingest/admission.py): requests past the limit are refused,
with a Retry-After that follows the refused-to-admitted ratio of the last seconds."""

from __future__ import annotations

import pytest

from ingest.admission import MAX_RETRY_AFTER_S, Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_admits_up_to_the_limit_and_again_after_a_leave(clock: Clock) -> None:
    admission = Admission(2, clock)

    assert [admission.enter(), admission.enter()] == [None, None]
    assert admission.enter() == 1
    assert admission.in_flight == 2

    admission.leave()
    assert admission.enter() is None
    assert admission.in_flight == 2


def test_zero_is_no_limit(clock: Clock) -> None:
    admission = Admission(0, clock)
    assert all(admission.enter() is None for _ in range(10_000))


@pytest.mark.parametrize(
    ("admitted", "refused", "retry_after"),
    [
        pytest.param(10, 1, 1, id="a few refused: 1 s"),
        pytest.param(10, 25, 3, id="2.5x refused: 3 s"),
        pytest.param(1, 1000, MAX_RETRY_AFTER_S, id="capped"),
    ],
)
def test_retry_after_follows_the_overload(
    clock: Clock, admitted: int, refused: int, retry_after: int
) -> None:
    admission = Admission(admitted, clock)
    for _ in range(admitted):
        admission.enter()
    answers = [admission.enter() for _ in range(refused)]

    assert answers[-1] == retry_after
    assert answers == sorted(answers)  # grows as the refusals add up


def test_the_ratio_forgets_seconds_older_than_the_last(clock: Clock) -> None:
    admission = Admission(1, clock)
    admission.enter()
    for _ in range(9):
        admission.enter()
    assert admission.enter() == 10

    clock.now += 1  # the last second still counts
    assert admission.enter() == 11
    clock.now += 1  # now only the previous second (1 refused) and this one
    assert admission.enter() == 2
    clock.now += 5  # a quiet gap forgets everything
    assert admission.enter() == 1
