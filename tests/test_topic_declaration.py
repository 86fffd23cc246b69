"""faust fix 8 on the real broker: a topic the cluster has is not created again (no CreateTopics, no
forced metadata refresh: ~0.1-0.2 s apiece, twice per internal topic at every worker start); a topic it
lacks is still created, with the partitions asked for."""

from __future__ import annotations

import asyncio
import uuid

import faust
from kafka.admin import KafkaAdminClient, NewTopic

from streams import faust_fixes


def test_an_existing_topic_is_not_created_again_and_a_missing_one_is(kafka_bootstrap):
    faust_fixes.apply()
    from faust.transport.drivers.aiokafka import Transport

    suffix = uuid.uuid4().hex[:8]
    existing, missing = f"decl-existing-{suffix}", f"decl-missing-{suffix}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(existing, 2, 1)])
        created: list[str] = []
        real_create = Transport._really_create_topic

        async def counting_create(self, owner, client, topic, *args, **kwargs):
            created.append(topic)
            return await real_create(self, owner, client, topic, *args, **kwargs)

        async def scenario() -> None:
            app = faust.App(f"decl-{suffix}", broker=f"kafka://{kafka_bootstrap}", topic_partitions=3)
            await app.producer.start()
            try:
                for name in (existing, missing, existing):
                    await app.topic(name, partitions=3, internal=True).declare()
            finally:
                await app.producer.stop()

        Transport._really_create_topic = counting_create  # type: ignore[method-assign]
        try:
            asyncio.run(scenario())
        finally:
            Transport._really_create_topic = real_create  # type: ignore[method-assign]

        assert created == [missing]
        partitions = {
            t["name"]: len(t["partitions"]) for t in admin.describe_topics([existing, missing]) if not t["error_code"]
        }
        assert partitions == {existing: 2, missing: 3}  # an existing topic is left as it is, as faust does
    finally:
        admin.delete_topics([existing, missing])
        admin.close()
