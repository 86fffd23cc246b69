"""The correction process's reports survive the trip through its pipe unchanged (`live.correction_process`)."""

from __future__ import annotations

from datetime import date

from backfill.corrections import Step
from live.correction_process import read_line, step_line
from shared.maintained_keys import MaintainedKey


def test_a_step_reads_back_as_it_was_written():
    keys = (
        MaintainedKey("A'; --", date(2016, 3, 1), "num-regime-core-v1", 63),
        MaintainedKey("é", date(2016, 3, 2), "m", 20),
    )
    step = Step(3, 2, 40, 11, 1, 27, 1, 0.25, keys)
    assert read_line(step_line(step) + "\n") == step


def test_the_queue_depth_and_anything_else_on_its_stdout():
    assert read_line('{"queue": 12}') == 12
    assert read_line("a line some library printed") is None
    assert read_line("[1, 2]") is None
