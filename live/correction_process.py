"""The correction path in a process of its own beside the worker, so live ticks never wait for a restatement.

In a thread of the worker's process the correction loop shared the interpreter's lock with the stream: a
restatement of years of closes recomputes for minutes, and every live tick of those minutes waited for
the lock between its steps (p99 1.7 s where 0.5 s is the goal). As a child process it has a core's worth
of interpreter to itself; PostgreSQL orders what both write (the fencing of `shared.store.embedding_store`: a
correction computed from older prices than a tick's loses to it, and the other way round).

The worker starts the child once its tables are recovered, restarts it if it dies, and stops it with
itself (SIGTERM; and the child dies with its parent: `PR_SET_PDEATHSIG`). The child writes one JSON line
per transaction on stdout (`Step`: counts, seconds, the keys it recomputed) and the queue's depth every few
seconds; the worker applies them to its metrics and hands the keys to its parity audit. Its log lines go to
the worker's stderr, in the worker's log format and level.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date

from live.corrections import CorrectionLoop, KeysCallback, Step, into_metrics
from shared.contract.config import Settings, load_settings, settings_env
from shared.metrics import StreamMetrics
from shared.signals import stop_on_signals
from shared.store.maintained_keys import MaintainedKey

log = logging.getLogger("embedder.corrections")
RESTART_SECONDS = 2.0
MAX_KEYS_PER_STEP = 20_000
"""Keys of one transaction sent to the audit (it checks at most this many corrected keys a round)."""


def step_line(step: Step) -> str:
    fields = asdict(step)
    fields["rewritten"] = [
        [k.entity_id, k.as_of_date.isoformat(), k.model_id, k.window_days] for k in step.rewritten[:MAX_KEYS_PER_STEP]
    ]
    return json.dumps({"step": fields})


def read_line(line: str) -> Step | int | None:
    """A child's line: a Step, the queue's depth, or None (not one of its reports)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if "queue" in message:
        return int(message["queue"])
    if "step" in message:
        fields = dict(message["step"])
        fields["rewritten"] = tuple(
            MaintainedKey(i, date.fromisoformat(d), m, int(n)) for i, d, m, n in fields.get("rewritten", ())
        )
        return Step(**fields)
    return None


def child_main(loglevel: str, parent: int | None = None) -> None:
    """The child: the correction loop until SIGTERM, its reports on stdout. `parent`: the worker's pid (a
    worker that died before the child asked to die with it leaves the child adopted: it ends at once)."""
    from shared.logs import configure
    from shared.signals import stop_with_parent

    stop_with_parent()
    if parent is not None and os.getppid() != parent:
        return
    settings = load_settings()
    level = {"crit": "CRITICAL", "warn": "WARNING"}.get(loglevel.lower(), loglevel.upper())
    if settings.log_format == "json":
        configure("json", level)
    else:
        logging.basicConfig(level=level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    out = sys.stdout

    def report(step: Step) -> None:
        out.write(step_line(step) + "\n")
        out.flush()

    def gauge(depth: int) -> None:
        out.write(json.dumps({"queue": depth}) + "\n")
        out.flush()

    loop = CorrectionLoop(settings, report=report, gauge=gauge)
    stop_on_signals(loop.stop)
    loop.run()


@dataclass
class CorrectionProcess:
    """In the worker: the child's keeper. `run` (in a thread) starts it, applies its reports, restarts it
    when it dies, and ends it when `stop` is set."""

    settings: Settings
    metrics: StreamMetrics | None = None
    on_rewritten: KeysCallback | None = None
    loglevel: str = "warn"
    stop: threading.Event = field(default_factory=threading.Event)
    starts: int = 0

    def run(self) -> None:
        apply: Callable[[Step], None] = into_metrics(self.metrics, self.on_rewritten)
        while not self.stop.is_set():
            child = subprocess.Popen(
                [sys.executable, "-m", "live.correction_process", self.loglevel, str(os.getpid())],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=os.environ | settings_env(self.settings),
                text=True,
            )
            self.starts += 1
            ender = threading.Thread(target=self._end_on_stop, args=(child,), name="corrections-stop", daemon=True)
            ender.start()
            assert child.stdout is not None
            for line in child.stdout:
                report = read_line(line)
                if isinstance(report, Step):
                    apply(report)
                elif isinstance(report, int) and self.metrics is not None:
                    self.metrics.recompute_queue.set(report)
            code = child.wait()
            if not self.stop.is_set():
                log.warning("the correction process exited with %s; starting it again in %.0fs", code, RESTART_SECONDS)
                self.stop.wait(RESTART_SECONDS)

    def _end_on_stop(self, child: subprocess.Popen) -> None:
        while child.poll() is None:
            if self.stop.wait(0.5):
                child.terminate()
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                return


def start_correction_process(
    settings: Settings,
    ready: threading.Event | None = None,
    metrics: StreamMetrics | None = None,
    on_rewritten: KeysCallback | None = None,
    loglevel: str = "warn",
) -> tuple[CorrectionProcess, threading.Thread]:
    """Keep the correction process running beside the worker, from when `ready` is set until `stop`."""
    from shared.background import start_when_ready

    keeper = CorrectionProcess(settings, metrics, on_rewritten, loglevel)
    return keeper, start_when_ready("corrections", keeper.run, keeper.stop, ready)


if __name__ == "__main__":
    child_main(sys.argv[1] if len(sys.argv) > 1 else "warn", int(sys.argv[2]) if len(sys.argv) > 2 else None)
