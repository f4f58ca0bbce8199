"""Issue 13 / 16: `--eval-data` images are read once, at the end, for evaluation only: synthesis,
quantization and every choice of the run happen before they are opened."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import dfq.run.accuracy as accuracy
import dfq.run.quantize_run as quantize_run
from dfq.cli import main


def test_eval_data_is_read_only_after_quantization(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "real.npz"
    np.savez(data, x=rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), y=np.arange(8) % 10)
    events: list[str] = []
    original_load, original_quantize = accuracy.load_images, quantize_run.quantize_

    def load(path, *args, **kwargs):
        events.append(f"load {path}")
        return original_load(path, *args, **kwargs)

    def quantize(*args, **kwargs):
        events.append("quantize")
        return original_quantize(*args, **kwargs)

    monkeypatch.setattr(accuracy, "load_images", load)
    monkeypatch.setattr(quantize_run, "quantize_", quantize)
    monkeypatch.setattr(quantize_run, "load_images", lambda *a, **k: events.append("calib read"))
    out = tmp_path / "q"
    res = CliRunner().invoke(
        main,
        [
            "quantize",
            "cifar10_resnet20",
            "--no-pretrained",
            "--bits",
            "8",
            "--out",
            str(out),
            "--eval-data",
            str(data),
            "--no-export",
            "--quiet",
            "--set",
            "synth.num_images=8",
            "--set",
            "synth.batch_size=8",
            "--set",
            "synth.iters=2",
            "--set",
            "quant.recon_iters=2",
            "--set",
            "quant.kd_iters=2",
            "--set",
            "quant.calib_batch_size=8",
        ],
    )
    assert res.exit_code == 0, res.output
    assert events == ["quantize", f"load {data}"]  # synthesized, never read as calibration
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    assert acc["n"] == 8 and "onnx" not in acc and acc["data"] == str(data)
