"""Issue 16: with stderr not a terminal, a long stage prints plain progress lines."""

from __future__ import annotations

import re

from click.testing import CliRunner

from dfq.cli import main


def test_progress_lines_reach_a_log(tmp_path, monkeypatch):
    monkeypatch.setenv("DFQ_PROGRESS_INTERVAL", "0.05")
    args = [
        "synthesize",
        "cifar10_resnet20",
        "--no-pretrained",
        "-n",
        "8",
        "--batch-size",
        "8",
        "--iters",
        "40",
        "--set",
        "synth.log_every=1",
        "--out",
        str(tmp_path / "c.npz"),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("[synthesize] step")]
    assert len(lines) >= 2
    assert re.search(r"step \d+/40 \(\d+%\) batch 1/1 bn [\d.]+ .*elapsed .*ETA", lines[0])
    quiet = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "q.npz"), "--quiet"])
    assert quiet.exit_code == 0 and "[synthesize]" not in quiet.stderr
