"""Apply the topic registry to a Kafka cluster, idempotently.

Missing topics are created; existing ones get their retention set and their partition
count raised to the registry's (Kafka cannot lower it: that is reported, not forced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.topics import TOPICS, TopicSpec


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


async def apply_topics(
    bootstrap: str, topics: tuple[TopicSpec, ...] = TOPICS, replication_factor: int = 1
) -> TopicReport:
    report = TopicReport()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = await _partition_counts(admin)
        missing = [spec for spec in topics if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=replication_factor,
                        topic_configs=spec.configs,
                    )
                    for spec in missing
                ]
            )
            report.created = [spec.name for spec in missing]
        for spec in topics:
            if spec.name not in existing:
                continue
            changed = await _reconcile(admin, spec, existing[spec.name], report)
            (report.updated if changed else report.unchanged).append(spec.name)
    finally:
        await admin.close()
    return report


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    names = await admin.list_topics()
    if not names:
        return {}
    described = await admin.describe_topics(list(names))
    return {item["topic"]: len(item["partitions"]) for item in described}


async def _reconcile(
    admin: AIOKafkaAdminClient, spec: TopicSpec, partitions: int, report: TopicReport
) -> bool:
    changed = False
    if partitions < spec.partitions:
        await admin.create_partitions({spec.name: NewPartitions(total_count=spec.partitions)})
        changed = True
    elif partitions > spec.partitions:
        report.warnings.append(
            f"{spec.name} has {partitions} partitions, more than the registry's "
            f"{spec.partitions}; Kafka cannot shrink a topic, left as is"
        )
    resource = ConfigResource(ConfigResourceType.TOPIC, spec.name)
    described = await admin.describe_configs([resource])
    current = _config_values(described)
    if any(current.get(name) != value for name, value in spec.configs.items()):
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name, spec.configs)]
        )
        changed = True
    return changed


def _config_values(responses: list[object]) -> dict[str, str]:
    values: dict[str, str] = {}
    for response in responses:
        for resource in getattr(response, "resources", []):
            # resource: (error_code, error_message, type, name, config_entries)
            for entry in resource[4]:
                values[entry[0]] = entry[1]
    return values
