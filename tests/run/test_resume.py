"""Issue 16: an interrupted synthesis resumes where it stopped and ends with the same set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dfq.cli import main
from dfq.run.resume import WorkDir

ARGS = [
    "synthesize",
    "cifar10_resnet20",
    "-n",
    "16",
    "--batch-size",
    "8",
    "--iters",
    "3",
    "--set",
    "synth.student_steps=2",
    "--quiet",
]
WEIGHTS: list[str] = []


@pytest.fixture(autouse=True)
def _weights(resnet20_weights):
    """The same model in every run (random weights would differ between runs)."""
    WEIGHTS[:] = ["--weights", str(resnet20_weights)]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + WEIGHTS)


def test_interrupted_synthesis_resumes_to_the_same_set(tmp_path, monkeypatch):
    whole = tmp_path / "whole.npz"
    assert run(*ARGS, "--out", whole).exit_code == 0

    out = tmp_path / "cut.npz"
    saved: list[int] = []
    original = WorkDir.save

    def save_then_stop(self, r, result, state):
        original(self, r, result, state)
        saved.append(r)
        raise KeyboardInterrupt  # stopped right after the first batch was kept

    monkeypatch.setattr(WorkDir, "save", save_then_stop)
    res = run(*ARGS, "--out", out)
    assert res.exit_code == 130 and saved == [0] and not out.exists()
    assert (tmp_path / ".cut.npz.partial" / "round_0000.pt").is_file()
    monkeypatch.setattr(WorkDir, "save", original)

    loads: list[int] = []
    original_load = WorkDir.load

    def counted_load(self, r):
        found = original_load(self, r)
        if found is not None:
            loads.append(r)
        return found

    monkeypatch.setattr(WorkDir, "load", counted_load)
    res = run(*ARGS, "--out", out, "--resume")
    assert res.exit_code == 0, res.output
    assert loads == [0]  # the first batch was read back, not recomputed
    report = json.loads((tmp_path / "cut.npz.report.json").read_text())
    assert report["resumed"] == ["round 0"]
    a, b = np.load(whole), np.load(out)
    assert np.array_equal(a["input"], b["input"]) and np.array_equal(a["labels"], b["labels"])
    assert not (tmp_path / ".cut.npz.partial").exists()  # finished: the work is cleaned up


@pytest.mark.parametrize("change, what", [(["--seed", "5"], "seed"), (["--iters", "4"], "recipe")])
def test_resume_with_another_seed_or_recipe_is_refused(tmp_path, monkeypatch, change, what):
    out = tmp_path / "c.npz"

    def stop(self, r, result, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(WorkDir, "save", stop)
    assert run(*ARGS, "--out", out).exit_code == 130
    monkeypatch.undo()
    res = run(*ARGS, *change, "--out", out, "--resume")
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and f"another {what}" in res.stderr


def test_nothing_to_resume_is_one_line(tmp_path):
    res = run(*ARGS, "--out", tmp_path / "c.npz", "--resume")
    assert res.exit_code == 2 and "nothing to resume" in res.stderr
