"""Log lines as JSON on request (`EMBEDDER_LOG_FORMAT=json`): one object per line, for every command
and the worker, so a log pipeline reads them without parsing text."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"[, "exception"]} per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def json_logging_config(level: str | int = "WARNING") -> dict:
    """A dictConfig (for mode/faust's worker, which sets up logging itself) writing JSON to stderr."""
    level = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "shared.logs.JsonFormatter"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(log_format: str, level: str | int = "WARNING") -> None:
    """Log JSON lines to stderr when `log_format` is json (text needs nothing: Python's default)."""
    if log_format == "json":
        import logging.config

        logging.config.dictConfig(json_logging_config(level))


def error_line(prog: str, message: str, log_format: str) -> str:
    """A command's one-line error, as text or as a JSON log line."""
    if log_format == "json":
        return json.dumps(
            {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "error",
                "logger": prog,
                "message": message,
            },
            ensure_ascii=False,
        )
    return f"{prog}: {message}"


class RepeatFilter(logging.Filter):
    """Lets the first of similar records (same logger, same text once digits are masked) through, then
    drops the repeats for `window` seconds and says on the next one let through how many it dropped: a
    client that reconnects every 0.1 s to a lost broker logs a line a minute, not 600."""

    def __init__(self, window: float = 60.0, clock=None):
        super().__init__()
        self.window = window
        self.clock = clock or __import__("time").monotonic
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, _DIGITS.sub("#", str(record.msg)))
        now = self.clock()
        first, dropped = self._seen.get(key, (None, 0))
        if first is not None and now - first < self.window:
            self._seen[key] = (first, dropped + 1)
            return False
        self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} ({dropped} similar line(s) in the last {self.window:.0f} s not shown)"
        return True


_DIGITS = __import__("re").compile(r"\d+")
REPEATING_LOGGERS = ("kafka", "aiokafka", "faust.transport.producer")
"""The Kafka clients' loggers: they log every reconnect attempt; faust's producer logs a warning each time
its buffer of changelog writes waits for a flush (normal back-pressure while a bootstrap loads windows)."""


def quiet_repeats(prefixes: tuple[str, ...] = REPEATING_LOGGERS, window: float = 60.0) -> RepeatFilter:
    """Put one RepeatFilter on every logger under `prefixes` that exists now (call it after importing
    the clients); returns it."""
    repeat = RepeatFilter(window)
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes] + list(prefixes)
    for name in set(names):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(repeat)
    return repeat
