"""A message produced to the real broker comes back from it, key and value intact."""

from __future__ import annotations

import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from shared.broker.publisher import partition_for
from tests.support.helpers import wait_for


def test_produce_and_consume_through_the_real_broker(kafka_bootstrap):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
        wait_for(lambda: topic in admin.list_topics(), 30, f"topic {topic} in the broker's metadata")
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        sent = {f"k{i}".encode(): f"v{i}".encode() for i in range(30)}
        futures = {k: producer.send(topic, key=k, value=v) for k, v in sent.items()}
        producer.flush(timeout=30)
        # A replay's row batches go where the key hash sends live rows of the same instrument.
        assert {k: f.get().partition for k, f in futures.items()} == {k: partition_for(k.decode(), 3) for k in sent}
        producer.close()
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"g-{topic}",
            consumer_timeout_ms=15000,
        )
        got = {}
        for msg in consumer:
            got[msg.key] = msg.value
            if len(got) == len(sent):
                break
        consumer.close()
        assert got == sent
    finally:
        admin.delete_topics([topic])
        admin.close()
