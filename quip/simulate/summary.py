"""What a run reports: the `Summary` (counts, the final table, the JSON summary), the
progress bar while it runs, and the first failure of each kind said at once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from quip.simulate.gateway import EVENTS_PATH

# A gateway down for --retry-for fails every batch still queued; the first ones say why.
MAX_FAILURE_MESSAGES: Final = 20


@dataclass(slots=True)
class Summary:
    """What a run sent; `events_accepted`/`events_rejected` are the gateway's counts."""

    mode: str
    url: str
    project: str
    seed: int
    users: int
    days: int | None = None
    window_from: str | None = None
    window_to: str | None = None
    rate: float | None = None
    duration_s: float | None = None
    concurrent_sessions: int | None = None
    requests: int = 0
    batches_ok: int = 0
    retries: int = 0
    batches_failed: int = 0
    events_generated: int = 0
    events_accepted: int = 0
    events_rejected: int = 0
    events_failed: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sessions: int = 0
    plays: int = 0
    users_active: int = 0
    services_generated: int = 0
    services_published: int = 0
    services_failed: int = 0
    services_note: str = ""
    elapsed_s: float = 0.0
    interrupted: bool = False
    aborted: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events_accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def note_failure(self, message: str) -> None:
        if len(self.failures) < MAX_FAILURE_MESSAGES:
            self.failures.append(message)

    @property
    def ok(self) -> bool:
        return self.batches_failed == 0 and self.services_failed == 0 and self.aborted is None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["events_per_s"] = round(self.events_per_s, 1)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data

    def table(self) -> Table:
        table = Table(title=f"quip simulate ({self.mode})", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        rows: list[tuple[str, str]] = [
            ("gateway", f"{self.url}{EVENTS_PATH} (project {self.project})"),
            ("seed", str(self.seed)),
            ("users", f"{self.users:,} ({self.users_active:,} sent events)"),
        ]
        if self.mode == "historical":
            rows.append(("days", f"{self.days} ({self.window_from} .. {self.window_to})"))
        else:
            rows.append(("rate", f"{self.rate:g} events/s, {self.concurrent_sessions} sessions"))
        rows += [
            ("requests", f"{self.batches_ok:,} ok, {self.retries:,} retries, "
                         f"{self.batches_failed:,} failed"),
            ("events", f"{self.events_accepted:,} accepted, {self.events_rejected:,} rejected, "
                       f"{self.events_failed:,} failed (of {self.events_generated:,})"),
            ("sessions", f"{self.sessions:,}"),
            ("plays", f"{self.plays:,}"),
            ("service messages", self._services_text()),
            ("elapsed", f"{self.elapsed_s:.1f} s"),
            ("throughput", f"{self.events_per_s:,.0f} events/s"),
        ]  # fmt: skip
        if self.reject_reasons:
            top = sorted(self.reject_reasons.items(), key=lambda kv: -kv[1])[:5]
            rows.append(("rejections", "; ".join(f"{n} x {reason}" for reason, n in top)))
        for failure in self.failures[:5]:
            rows.append(("failure", failure))
        if self.interrupted:
            rows.append(("interrupted", "stopped by Ctrl-C"))
        if self.aborted:
            rows.append(("aborted", self.aborted))
        for name, value in rows:
            table.add_row(name, value)
        return table

    def _services_text(self) -> str:
        if self.services_note:
            return f"{self.services_note} ({self.services_generated:,} generated)"
        return (
            f"{self.services_published:,} published, {self.services_failed:,} failed "
            f"(of {self.services_generated:,})"
        )


class RunProgress:
    """The progress bar on stderr (off with --no-progress): events done of `total` (None:
    unknown), with the accepted rate, retries and failures so far."""

    def __init__(
        self,
        summary: Summary,
        console: Console,
        total: int | None,
        *,
        enabled: bool,
        started: float,
    ) -> None:
        self._summary = summary
        self._started = started
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self._task: TaskID = self._progress.add_task(
            f"{summary.mode} events", total=total, status=""
        )

    def start(self) -> None:
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def advance(self, events: int) -> None:
        self._progress.advance(self._task, events)
        self.refresh()

    def refresh(self) -> None:
        summary = self._summary
        elapsed = max(1e-6, time.monotonic() - self._started)
        status = f"{summary.events_accepted / elapsed:,.0f} ev/s"
        if summary.retries:
            status += f" · {summary.retries:,} retries"
        if summary.batches_failed:
            status += f" · [red]{summary.batches_failed:,} failed[/red]"
        self._progress.update(self._task, status=status)


class WarnOnce:
    """The first failure of each kind is said at once: otherwise the retries run for up to
    `retry_for_s` with nothing on screen (or only a retry count on the bar)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._said: set[str] = set()

    def __call__(self, what: str, message: str) -> None:
        if what in self._said:
            return
        self._said.add(what)
        self._console.print(f"[yellow]quip simulate: {escape(message)}[/yellow]", highlight=False)


def write_json_summary(summary: Summary, path: Path) -> None:
    path.write_bytes(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2))
