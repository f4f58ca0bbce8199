"""Progress in logs: without a terminal, plain lines every interval with step, ETA and a final
line."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path

import pytest

from dfq import progress as prog
from dfq.progress import StepBar, format_duration, progress, set_quiet

LINE = re.compile(r"^\[synthesize\] step (\d+)/30 \(\d+%\) bn [\d.]+ \| elapsed \d+s, ETA \d+s$")


@pytest.fixture
def log_stderr(tmp_path, monkeypatch):
    """A file for stderr (see `to_file`) and log lines every 0.05 s."""
    monkeypatch.setenv(prog.INTERVAL_ENV, "0.05")
    yield tmp_path / "stderr.log"
    set_quiet(False)


@contextmanager
def to_file(path: Path) -> Iterator[None]:
    """stderr into `path`, not a terminal (inside the test: pytest resets sys.stderr per phase)."""
    with open(path, "w") as f, redirect_stderr(f):
        yield


def _run_steps(n: int = 30, seconds: float = 0.3) -> None:
    with StepBar(n, "synthesize") as bar:
        for i in range(n):
            time.sleep(seconds / n)
            bar.step(1, f"bn {3.0 / (i + 1):.2f}")


def test_stepbar_writes_lines_with_step_and_eta(log_stderr):
    with to_file(log_stderr):
        _run_steps()
    lines = log_stderr.read_text().splitlines()
    steps = [LINE.match(line) for line in lines[:-1]]
    assert len(steps) >= 3 and all(steps), lines
    counts = [int(m.group(1)) for m in steps]
    assert counts == sorted(counts) and counts[-1] <= 30
    assert re.fullmatch(r"\[synthesize\] done 30/30 in \d+s", lines[-1])


def test_quiet_writes_nothing(log_stderr):
    set_quiet(True)
    with to_file(log_stderr):
        _run_steps(10, 0.15)
        with progress(range(5), "evaluate") as items:
            for _ in items:
                time.sleep(0.03)
    assert log_stderr.read_text() == ""


def test_progress_iterator_lines(log_stderr):
    seen = []
    with to_file(log_stderr), progress(range(8), "evaluate") as items:
        for i in items:
            time.sleep(0.03)
            seen.append(i)
    assert seen == list(range(8))
    lines = log_stderr.read_text().splitlines()
    assert len(lines) >= 3 and all(line.startswith("[evaluate] step ") for line in lines[:-1])
    assert "/8 (" in lines[0] and "ETA" in lines[0]
    assert re.fullmatch(r"\[evaluate\] done 8/8 in \d+s", lines[-1])


def test_failure_says_stopped(log_stderr):
    with to_file(log_stderr), pytest.raises(RuntimeError), StepBar(10, "distill") as bar:
        bar.step(3)
        raise RuntimeError("boom")
    assert log_stderr.read_text().splitlines()[-1].startswith("[distill] stopped at 3/10 in ")


def test_interval_argument_and_disabled(log_stderr):
    with to_file(log_stderr):
        with StepBar(5, "slow", interval=3600) as bar:
            for _ in range(5):
                bar.step()
        with StepBar(5, "off", enabled=False) as bar:
            bar.step(5)
    assert log_stderr.read_text().splitlines() == ["[slow] done 5/5 in 0s"]


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 90, 450, 3725)] == [
        "4s",
        "1m30s",
        "7m30s",
        "1h02m05s",
    ]
