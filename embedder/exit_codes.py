"""One place that turns the project's errors into a one-line message and an exit code."""
from __future__ import annotations

import sys
from collections.abc import Callable

from shared.config import load_settings, redact_url
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
        url = load_settings().database_url
        sys.stderr.write(f"{prog}: {str(e).replace(url, redact_url(url))}\n")
        return FAILURE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return INTERRUPTED
    return 0
