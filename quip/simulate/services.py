"""The CMS and video services' messages (pure, seeded like the sessions).

New content is encoded and published (~3 items per day historically, one per ~2 min
live): EncodingJob queued → succeeded (92%) or failed (then re-queued as a new job) with
encode_ms, then ContentPublished; a few "updated" actions per day. Historical content
becomes playable when published. The messages a session causes (social notifications,
e-mails) are drawn with the session (`session.py`); all of them are published to Kafka
with a bootstrap, else over HTTP to `quip up` (`service_sender.py`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator

from quip.simulate.catalog import Content
from quip.simulate.draws import draw_uuid
from quip.simulate.model import DAY_MS, Model
from quip.simulate.session import ServiceItem
from schemas.services import ContentPublished, EncodingJob, ServiceMessage


def _content_pipeline(
    rng: random.Random,
    content_id: str,
    queued_ms: int,
    project: str,
    model: Model,
) -> tuple[list[ServiceMessage], int]:
    """Encoding jobs until one succeeds, then the publication. Returns the messages and
    the publication time."""
    messages: list[ServiceMessage] = []
    t = queued_ms
    while True:
        job_id = "job-" + draw_uuid(rng)
        profile = rng.choice(("1080p-h264", "4k-hevc", "8k-hevc-360"))
        messages.append(
            EncodingJob(
                message_id=draw_uuid(rng),
                job_id=job_id,
                content_id=content_id,
                status="queued",
                ts=t,
                profile=profile,
                project=project,
            )
        )
        encode_ms = round(rng.lognormvariate(math.log(180_000), 0.6), 1)
        t += int(encode_ms) + int(rng.uniform(1_000, 60_000))
        succeeded = rng.random() < model.encoding_success
        messages.append(
            EncodingJob(
                message_id=draw_uuid(rng),
                job_id=job_id,
                content_id=content_id,
                status="succeeded" if succeeded else "failed",
                ts=t,
                encode_ms=encode_ms,
                profile=profile,
                project=project,
            )
        )
        if succeeded:
            break
        t += int(rng.uniform(60_000, 600_000))
    t += int(rng.uniform(60_000, 1_800_000))
    messages.append(
        ContentPublished(
            message_id=draw_uuid(rng),
            content_id=content_id,
            action="published",
            content_type="video",
            ts=t,
            author_id=f"creator-{rng.randrange(40):02d}",
            project=project,
        )
    )
    return messages, t


def window_content(
    seed: int, min_ts: int, end_ms: int, project: str, model: Model, base: list[Content]
) -> tuple[list[Content], list[ServiceMessage]]:
    """New content encoded and published during [min_ts, end_ms] (it becomes playable when
    published), and updates of existing content."""
    rng = random.Random(f"{seed}/services")  # noqa: S311 (test data, not secrets)
    span = end_ms - min_ts
    new_items: list[Content] = []
    messages: list[ServiceMessage] = []
    count = max(1, round(model.new_content_per_day * span / DAY_MS))
    for number in range(count):
        queued = min_ts + int(rng.uniform(0, span))
        content_id = f"vid-n{seed % 100_000:05d}-{number:04d}"
        pipeline, published = _content_pipeline(rng, content_id, queued, project, model)
        pipeline = [message for message in pipeline if message.ts <= end_ms]
        messages.extend(pipeline)
        if published <= end_ms:
            kind = rng.choice(("short", "immersive"))
            length = rng.randint(90_000, 1_200_000)
            new_items.append(Content(content_id, kind, length, rng.uniform(0.05, 0.6), published))
    for _ in range(round(model.content_updates_per_day * span / DAY_MS)):
        item = rng.choice(base)
        messages.append(
            ContentPublished(
                message_id=draw_uuid(rng),
                content_id=item.content_id,
                action="updated",
                content_type="video",
                ts=min_ts + int(rng.uniform(0, span)),
                project=project,
            )
        )
    messages.sort(key=lambda message: message.ts)
    return new_items, messages


def live_content(seed: int, start_ms: int, project: str, model: Model) -> Iterator[ServiceItem]:
    """New content's messages from `start_ms` on, forever, in time order."""
    rng = random.Random(f"{seed}/services-live")  # noqa: S311 (test data, not secrets)
    pending: list[tuple[int, int, ServiceMessage]] = []
    sequence = 0
    t = start_ms
    number = 0
    while True:
        t += int(rng.expovariate(1 / (model.live_new_content_every_s * 1_000)))
        content_id = f"vid-l{seed % 100_000:05d}-{number:06d}"
        number += 1
        messages, _ = _content_pipeline(rng, content_id, t, project, model)
        for message in messages:
            heapq.heappush(pending, (message.ts, sequence, message))
            sequence += 1
        while pending and pending[0][0] <= t:
            yield ServiceItem(heapq.heappop(pending)[2])
