from datetime import date

from sinks.capabilities import Capabilities
from sinks.queries.playback import month_ranges


def test_month_ranges_cut_at_month_starts() -> None:
    assert month_ranges(date(2026, 11, 20), date(2027, 1, 3)) == (
        (date(2026, 11, 20), date(2026, 11, 30)),
        (date(2026, 12, 1), date(2026, 12, 31)),
        (date(2027, 1, 1), date(2027, 1, 3)),
    )
    assert month_ranges(date(2026, 2, 1), date(2026, 2, 28)) == (
        (date(2026, 2, 1), date(2026, 2, 28)),
    )
    assert month_ranges(date(2026, 3, 5), date(2026, 3, 4)) == ()


def test_final_per_partition_only_before_19() -> None:
    assert Capabilities((18, 16, 1)).final_per_partition
    assert not Capabilities((19, 1, 0)).final_per_partition
    assert not Capabilities((26, 9, 1)).final_per_partition
