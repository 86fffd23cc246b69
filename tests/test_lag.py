"""`embedder lag` against the real broker: equal to what an independent client reads, partition by
partition; zero after catch-up; STALL/STOP while the worker is dead and the backlog grows."""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from shared.broker.topics import ensure_topics
from tests.support.cli import EMBEDDER, run_command, settings_of
from tests.support.helpers import wait_for
from tests.support.markets import publish_backlog
from tests.support.workers import start_named_worker as start_worker

LAG_EXIT = {"OK": 0, "ERR": 1, "WARN": 3, "REWIND": 4, "STALL": 5, "STOP": 6}  # docs/operations.md


def lag_json(env: dict[str, str], *extra: str) -> dict:
    """`embedder lag --json`; its exit code must be the documented one for the status it reports."""
    proc = run_command(EMBEDDER + ["lag", "--json", "--samples", "1", *extra], env, timeout=120)
    report = json.loads(proc.stdout)
    status = report["groups"][0]["status"]
    assert proc.returncode == LAG_EXIT[status], (status, proc.returncode, proc.stderr[-2000:])
    return report


def broker_view(env: dict[str, str], topics: list[str], partitions: int) -> dict[tuple[str, int], tuple]:
    """(committed, end) per partition from kafka-python's admin and consumer, not the project's code."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    admin = KafkaAdminClient(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    consumer = KafkaConsumer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        committed = admin.list_group_offsets({env["EMBEDDER_APP_ID"]: tps})[env["EMBEDDER_APP_ID"]]
        ends = consumer.end_offsets(tps)
    finally:
        admin.close()
        consumer.close()
    out = {}
    for tp in tps:
        om = committed.get(tp)
        c = om.offset if om is not None and om.offset >= 0 else None
        out[(tp.topic, tp.partition)] = (c, ends[tp])
    return out


def group_lag(report: dict) -> int:
    return report["groups"][0]["lag"]


@pytest.mark.slow
def test_lag_report_equals_the_broker_then_zero_then_stall_or_stop(cli_env, tmp_path):
    settings = settings_of(cli_env)
    ensure_topics(settings)
    topics = [settings.prices_topic]
    publish_backlog(settings, 5, date(2020, 1, 6))
    worker = start_worker(cli_env, tmp_path, "w1")
    try:  # let it consume and commit, then stop it: a committed position with a known backlog after it
        wait_for(lambda: group_lag(lag_json(cli_env)) == 0, 120, "the first catch-up")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    publish_backlog(settings, 7, date(2020, 2, 3))
    wait_for(lambda: lag_json(cli_env)["groups"][0]["members"] == 0, 30, "the stopped worker to leave the group")

    report = lag_json(cli_env)
    truth = broker_view(cli_env, topics, settings.partitions)
    group = report["groups"][0]
    assert group["group"] == settings.app_id and group["members"] == 0
    got = {(p["topic"], p["partition"]): (p["committed"], p["end"]) for p in group["partitions"]}
    assert got == truth  # partition by partition, committed and log-end offsets
    for p in group["partitions"]:
        assert p["lag"] == p["end"] - (p["committed"] or 0)
        if p["role"] == "worker":
            assert p["lag"] == 7 and p["status"] == "STOP"  # 7 batches behind, nobody consuming
            assert p["lag_seconds"] is not None and p["lag_seconds"] >= 0
    assert group["status"] == "STOP" and group["lag"] >= 7 * settings.partitions

    worker = start_worker(cli_env, tmp_path, "w2")
    try:
        wait_for(lambda: group_lag(lag_json(cli_env)) == 0, 120, "catch-up to zero lag")
        assert lag_json(cli_env)["groups"][0]["status"] == "OK"
    finally:
        worker.kill()  # kill -9: the member stays in the group until its session times out
        worker.wait(timeout=30)
    publish_backlog(settings, 3, date(2020, 3, 2))
    first = lag_json(cli_env)
    publish_backlog(settings, 3, date(2020, 3, 9))
    second = lag_json(cli_env, "--samples", "3", "--interval", "1")
    assert group_lag(second) > group_lag(first) > 0  # it keeps growing
    assert second["groups"][0]["status"] in ("STALL", "STOP")


def test_watch_prints_a_report_per_interval_until_interrupted(cli_env):
    ensure_topics(settings_of(cli_env))
    proc = subprocess.Popen(
        EMBEDDER + ["lag", "--watch", "--json", "--interval", "0.5"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    reports = [json.loads(line) for line in lines]
    assert [r["groups"][0]["group"] for r in reports] == [cli_env["EMBEDDER_APP_ID"]] * 3
    assert len({r["time"] for r in reports}) >= 2  # fresh samples, not one report repeated
    assert proc.returncode == 0


def test_lag_exits_1_when_the_broker_cannot_be_read_and_names_it(cli_env):
    env = cli_env | {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    with ThreadPoolExecutor(2) as pool:  # each waits out its 10 s of patience for a broker: side by side
        as_json = pool.submit(lag_json, env)
        as_table = pool.submit(run_command, EMBEDDER + ["lag", "--samples", "1"], env, 120)
        report, table = as_json.result(), as_table.result()
    assert report["groups"][0]["status"] == "ERR" and report["groups"][0]["error"]  # exit 1 (ERR), never 0 or 2
    assert table.returncode == 1 and "ERR" in table.stdout


def test_a_piped_table_keeps_its_headers_and_other_groups_can_be_read(cli_env):
    ensure_topics(settings_of(cli_env))
    proc = run_command(
        EMBEDDER + ["lag", "--samples", "1", "--group", "someone-else"], cli_env | {"COLUMNS": ""}, timeout=120
    )
    header = next(line for line in proc.stdout.splitlines() if "partition" in line)
    for column in ("role", "topic", "partition", "committed", "end", "lag s", "rate/s", "catch-up s", "status"):
        assert column in header
    assert "…" not in proc.stdout and "group someone-else" in proc.stdout
    assert proc.returncode in LAG_EXIT.values()


def test_a_one_shot_run_ends_at_its_first_unreadable_sample(monkeypatch):
    """A reading that failed (a refused login, or no broker for its 10 s of patience) ends a one-shot `lag`:
    each further reading would wait as long again (a wrong password took 33 s to say so, three readings)."""
    from embedder import lag_command
    from shared.broker.lag import GroupLag, LagReport
    from shared.broker.lag_status import LagStatus
    from shared.contract.config import Settings

    readings: list[str] = []

    class Monitor:
        def __init__(self, settings, window_seconds, group):
            pass

        def sample(self) -> LagReport:
            readings.append("sample")
            refused = GroupLag("g", "UNKNOWN", 0, LagStatus.ERR, 0, None, error="Kafka refused the credentials")
            return LagReport(0.0, 60.0, [refused])

        def close(self) -> None:
            readings.append("close")

    monkeypatch.setattr(lag_command, "LagMonitor", Monitor)
    code = lag_command.run_lag(Settings(), as_json=True, watch=False, samples=3, interval=1.0, window=60.0)
    assert code == 1 and readings == ["sample", "close"]


def test_statuses_are_judged_as_burrow_does():
    from shared.broker.lag import STALL_EVIDENCE_SECONDS, Sample, judge, stall_pending

    def samples(*pairs, apart=1.0):
        return [Sample(t * apart, c, e) for t, (c, e) in enumerate(pairs)]

    assert judge(samples((10, 10), (10, 12)), True) == "OK"  # lag was zero in the window
    # members, offset not moving: STALL once the window spans two of the worker's commit intervals;
    # over 1 s a live worker may simply not have committed yet (ci13's false STALL)
    assert judge(samples((5, 10), (5, 12), apart=STALL_EVIDENCE_SECONDS), True) == "STALL"
    assert judge(samples((5, 10), (5, 12)), True) == "OK"
    assert stall_pending(samples((5, 10), (5, 12)), True) == STALL_EVIDENCE_SECONDS - 1
    assert stall_pending(samples((5, 10), (5, 12), apart=STALL_EVIDENCE_SECONDS), True) == 0
    assert stall_pending(samples((5, 10), (6, 12)), True) == 0  # it moved: decided
    assert stall_pending(samples((5, 10), (5, 12)), False) == 0  # nobody consuming: STOP, decided
    assert judge(samples((5, 10), (5, 12)), False) == "STOP"  # nobody consuming
    assert judge(samples((5, 10), (6, 13), (7, 16)), True) == "WARN"  # moving, lag growing every sample
    assert judge(samples((5, 10), (8, 12), (9, 13)), True) == "OK"
    assert judge(samples((50, 60), (20, 60), (25, 60)), True) == "REWIND"  # committed offset moved back


@pytest.mark.slow
def test_a_one_shot_replay_leaves_its_group_with_no_lag(db_url, cli_env, tmp_path):
    from tests.support.helpers import load_synthetic

    load_synthetic(db_url, tmp_path, instruments=6)
    proc = run_command(
        EMBEDDER
        + [
            "replay",
            "--from",
            "2019-11-01",
            "--to",
            "2019-12-31",
            "--market-id",
            "US_EQ",
            "--model-id",
            "num-regime-core-v1",
        ],
        cli_env,
        timeout=300,
    )
    assert proc.returncode == 0 and "started one for this run" in proc.stderr, proc.stderr[-2000:]
    report = lag_json(cli_env)  # the worker the replay started is gone, and left nothing behind
    assert report["groups"][0]["status"] == "OK" and group_lag(report) == 0
