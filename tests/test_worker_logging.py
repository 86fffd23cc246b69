import logging

import faust

from streams.worker import GracefulWorker


def test_the_worker_keeps_the_root_logger_at_its_level():
    """faust's spinner would set the root logger to DEBUG (every client debug call then builds a record)."""
    app = faust.App("spinner-test", broker="kafka://127.0.0.1:1")
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        worker = GracefulWorker(app, loglevel="warn", quiet=True, grace=1.0)
        worker._setup_logging()
        assert root.getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger("aiokafka.producer").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
