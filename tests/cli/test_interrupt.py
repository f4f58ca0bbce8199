"""Issue 19: SIGTERM (what batch schedulers send) stops a run like Ctrl-C: no partial output."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dfq.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slow_recipe(tmp_path):
    """Synthesis long enough to be interrupted, on a model small enough to start in seconds."""
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump({"synth": {"num_images": 8, "batch_size": 8, "iters": 5000}}))
    return path


def _wait_for(buffer: list[bytes], text: bytes, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if text in b"".join(buffer):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_leaves_no_output_and_exits_143(tmp_path, slow_recipe):
    out = tmp_path / "q"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dfq",
            "quantize",
            "cifar10_resnet20",
            "--no-pretrained",
            "--bits",
            "8",
            "--recipe",
            str(slow_recipe),
            "--out",
            str(out),
            "--threads",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(lambda: proc.stderr.read(1), b"")))
    reader.start()
    try:
        assert _wait_for(stderr, b"synthesize", 120), b"".join(stderr).decode()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        reader.join(timeout=10)
    text = b"".join(stderr).decode()
    assert code == 143, text
    assert text.strip().splitlines()[-1] == "interrupted" and "Traceback" not in text
    assert not out.exists() and not list(tmp_path.glob(".q.tmp-*"))


def test_sigterm_while_writing_removes_the_temporary_directory(tmp_path, monkeypatch):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns

    monkeypatch.setattr("dfq.run.quantize_run.save_calibration", terminated)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), y=np.arange(8))
    out = tmp_path / "q"
    before = signal.getsignal(signal.SIGTERM)
    res = CliRunner().invoke(
        main,
        [
            "quantize",
            "cifar10_resnet20",
            "--no-pretrained",
            "--bits",
            "8",
            "--calib",
            str(data),
            "--set",
            "quant.reconstruct=false",
            "--set",
            "quant.kd_iters=0",
            "--no-export",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 143 and res.stderr.strip().splitlines()[-1] == "interrupted"
    # nothing under a final name, no temporary output; the work --resume continues is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [".q.partial", "d.npz"]
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is gone
