"""One place that turns the project's errors into a one-line message and an exit code."""
from __future__ import annotations

import sys
from collections.abc import Callable

import psycopg

from shared.config import load_settings, scrub_secret
from shared.errors import BadArguments, EmbedderError

USAGE = 2
FAILURE = 1
INTERRUPTED = 130


def run_with_exit_codes(prog: str, body: Callable[[], object]) -> int:
    """Run `body`; bad arguments -> exit 2, known failures -> 1, never a traceback or a secret."""
    try:
        body()
    except BadArguments as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return USAGE
    except EmbedderError as e:
        sys.stderr.write(f"{prog}: {_redacted(str(e))}\n")
        return FAILURE
    except psycopg.Error as e:
        first = _redacted(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        if isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)):
            sys.stderr.write(f"{prog}: the database schema is older than this embedder ({first}): "
                             "run `embedder db upgrade`\n")
        else:
            sys.stderr.write(f"{prog}: database error: {first}\n")
        return FAILURE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return INTERRUPTED
    return 0


def _redacted(message: str) -> str:
    url = load_settings().database_url
    return scrub_secret(message, url)
