"""`embedder db upgrade` on an empty database and on one that already has the platform's tables."""

from __future__ import annotations

import logging

import psycopg
import pytest

from shared.store.migrate import upgrade

PLATFORM_EMBEDDINGS = """
CREATE TABLE numeric_window_embeddings (
    embedding_id bigserial PRIMARY KEY, entity_type varchar(32) NOT NULL, entity_id varchar(64) NOT NULL,
    window_spec jsonb NOT NULL, as_of_date date NOT NULL, model_id varchar(64) NOT NULL,
    vector bytea, vector_ref varchar(255), created_at timestamptz NOT NULL DEFAULT now())
"""


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_upgrade_creates_tables_and_second_run_is_a_noop(database_factory):
    url = database_factory()
    first = upgrade(url)
    assert first.applied == [
        "0001_base_tables",
        "0002_embeddings_unique_key",
        "0003_stream_progress",
        "0004_live_capture",
        "0005_tick_rows_missing",
        "0006_run_offsets",
        "0007_live_bootstrap",
        "0008_live_queries",
        "0009_exact_table",
        "0010_lean_capture",
        "0011_live_layout",
        "0012_embedding_versions",
        "0013_write_fencing",
        "0014_definer_triggers",
        "0015_absent_recorded_index",
        "0016_versions_probe_by_index",
        "0017_versions_probe_by_key_only",
    ]
    assert {
        "instruments",
        "prices_daily",
        "numeric_window_embeddings",
        "embedder_absent_embeddings",
        "embedder_recompute_queue",
        "embedder_state_format",
        "embedder_parity_audits",
    } <= tables(url)
    second = upgrade(url)
    assert second.applied == [] and second.already_applied == 17
    with psycopg.connect(url) as conn:
        cols = dict(
            conn.execute(
                """SELECT column_name, data_type FROM information_schema.columns
               WHERE table_name = 'prices_daily'"""
            ).fetchall()
        )
        assert cols["close"] == "double precision" and cols["trade_date"] == "date"
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE conname = 'numeric_window_embeddings_entity_asof_model_key'"
            ).fetchone()[0]
            == 1
        )


def test_upgrade_on_platform_database_removes_duplicates_keeping_newest(database_factory, caplog):
    url = database_factory()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('platform_head')")
        conn.execute(PLATFORM_EMBEDDINGS)
        rows = [
            ("A", "2020-01-02", b"old"),
            ("A", "2020-01-02", b"older-but-newer-id"),
            ("A", "2020-01-03", b"unique"),
            ("B", "2020-01-02", b"b1"),
            ("B", "2020-01-02", b"b2"),
            ("B", "2020-01-02", b"b3"),
        ]
        for entity, day, vec in rows:
            conn.execute(
                """INSERT INTO numeric_window_embeddings
                       (entity_type, entity_id, window_spec, as_of_date, model_id, vector)
                   VALUES ('INSTRUMENT', %s, '{"window_days": 63, "entity_type": "INSTRUMENT"}', %s,
                           'numeric-simple-v1', %s)""",
                (entity, day, vec),
            )
    with caplog.at_level(logging.INFO, logger="embedder.migrations"):
        result = upgrade(url)
    assert "0002_embeddings_unique_key" in result.applied
    assert "removed 3 duplicate" in caplog.text
    with psycopg.connect(url) as conn:
        kept = conn.execute(
            "SELECT entity_id, as_of_date::text, vector FROM numeric_window_embeddings ORDER BY 1, 2"
        ).fetchall()
        assert [(e, d, bytes(v)) for e, d, v in kept] == [
            ("A", "2020-01-02", b"older-but-newer-id"),
            ("A", "2020-01-03", b"unique"),
            ("B", "2020-01-02", b"b3"),
        ]
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "platform_head"
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                """INSERT INTO numeric_window_embeddings (entity_type, entity_id, window_spec, as_of_date, model_id)
                   VALUES ('INSTRUMENT', 'A', '{}', '2020-01-03', 'numeric-simple-v1')"""
            )
    assert {"instruments", "prices_daily"} <= tables(url)
    assert upgrade(url).applied == []
