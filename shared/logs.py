"""Log lines as JSON on request (`EMBEDDER_LOG_FORMAT=json`): one object per line, for every command
and the worker, so a log pipeline reads them without parsing text."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"[, "exception"]} per record."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def json_logging_config(level: str | int = "WARNING") -> dict:
    """A dictConfig (for mode/faust's worker, which sets up logging itself) writing JSON to stderr."""
    level = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
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
        return json.dumps({"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "level": "error",
                           "logger": prog, "message": message}, ensure_ascii=False)
    return f"{prog}: {message}"
