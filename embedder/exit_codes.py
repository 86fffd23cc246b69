"""One place that turns the project's errors into a one-line message and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable

import psycopg

from shared.broker.kafka_refusals import refusal
from shared.broker.lag_status import LagStatus
from shared.contract.config import load_settings, scrub_secret
from shared.contract.errors import BadArguments, EmbedderError
from shared.logs import error_line

USAGE = 2
FAILURE = 1
INTERRUPTED = 130
LAG_EXIT_CODES = {
    LagStatus.OK: 0,
    LagStatus.ERR: FAILURE,
    LagStatus.WARN: 3,
    LagStatus.REWIND: 4,
    LagStatus.STALL: 5,
    LagStatus.STOP: 6,
}
"""`embedder lag`: one code per status (the worst group's), never USAGE, for cron and monitoring checks."""


def run_with_exit_codes(prog: str, body: Callable[[], object]) -> int:
    """Run `body`; bad arguments -> exit 2, known failures -> 1, never a traceback or a secret; an int
    `body` returns is the exit code (a command's own, e.g. `embedder lag`'s status)."""
    try:
        result = body()
    except BadArguments as e:
        _say(prog, f"error: {e}")
        return USAGE
    except EmbedderError as e:
        _say(prog, _redacted(str(e)))
        return FAILURE
    except psycopg.Error as e:
        first = _redacted(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        if isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            _say(prog, f"the database schema is older than this embedder ({first}): run `embedder db upgrade`")
        else:
            _say(prog, f"database error: {first}")
        return FAILURE
    except Exception as e:
        if type(e).__module__.startswith("adbc_driver"):  # the large reads' driver (shared.store.embedding_reads)
            _say(prog, _redacted(f"database error: {_adbc_message(e)}"))
            return FAILURE
        kafka_errors = sys.modules.get("kafka.errors")  # not imported by commands that never reach Kafka
        if kafka_errors is None or not isinstance(e, kafka_errors.KafkaError):
            raise
        _say(prog, _redacted(refusal() or f"Kafka: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}"))
        return FAILURE
    except KeyboardInterrupt:
        _say(prog, "interrupted")
        return INTERRUPTED
    return result if isinstance(result, int) else 0


def _adbc_message(e: BaseException) -> str:
    """PostgreSQL's own words from an ADBC driver error (its text also holds the whole query)."""
    text = str(e)
    if "ERROR:" in text:
        return text.split("ERROR:", 1)[1].strip().splitlines()[0].strip()
    return (text.strip().splitlines() or [type(e).__name__])[0][:300]


def _say(prog: str, message: str) -> None:
    """The one-line error on stderr: text, or a JSON log line with EMBEDDER_LOG_FORMAT=json."""
    try:
        log_format = load_settings().log_format
    except BadArguments:
        log_format = "text"
    sys.stderr.write(error_line(prog, message, log_format) + "\n")


def _redacted(message: str) -> str:
    url = load_settings().database_url
    return scrub_secret(message, url)
