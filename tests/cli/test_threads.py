"""Issue 19: --threads sets PyTorch's and onnxruntime's intra-op threads for the whole command."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfq.cli import main
from dfq.errors import DfqError
from dfq.export import check

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_quantize_runs_with_threads_and_restores(monkeypatch):
    seen = {}

    def fake_run(*args, **kwargs):
        seen["torch"] = torch.get_num_threads()
        return {
            "stages": {},
            "total_seconds": 0.0,
            "num_calibration_images": 0,
            "unquantized_layers": [],
        }

    monkeypatch.setattr("dfq.cli.quantize_cmd.run_quantize", fake_run)
    res = run("quantize", "cifar10_resnet20", "--no-pretrained", "--bits", "8", "--threads", 3)
    assert res.exit_code == 0, res.output
    assert seen["torch"] == 3 and torch.get_num_threads() == 1


def test_synthesize_runs_with_threads(monkeypatch):
    seen = {}

    def fake_run(*args, **kwargs):
        seen["torch"] = torch.get_num_threads()
        raise DfqError("recorded")

    monkeypatch.setattr("dfq.cli.synthesize_cmd.run_synthesize", fake_run)
    res = run("synthesize", "cifar10_resnet20", "--no-pretrained", "--threads", 2)
    assert res.exit_code == 2 and "recorded" in res.stderr
    assert seen["torch"] == 2 and torch.get_num_threads() == 1


def test_evaluate_onnx_gets_threads_for_onnxruntime(monkeypatch):
    seen = {}

    def fake_eval(*args, threads=None, **kwargs):
        seen.update(ort=threads, torch=torch.get_num_threads())
        return {"top1": 0.0, "top5": 0.0, "n": 0, "seconds": 0.0, "providers": ["cpu"]}

    monkeypatch.setattr("dfq.cli.evaluate_cmd.evaluate_onnx", fake_eval)
    res = run("evaluate", "m.onnx", "--data", "x.npz", "--threads", 2, "--json")
    assert res.exit_code == 0, res.output
    assert seen == {"ort": 2, "torch": 2}


def test_evaluate_model_runs_with_threads(tmp_path, monkeypatch):
    seen = {}

    def fake_evaluate(*args, **kwargs):
        seen["torch"] = torch.get_num_threads()
        return {"top1": 0.0, "top5": 0.0, "n": 2, "seconds": 0.0}

    monkeypatch.setattr("dfq.cli.evaluate_cmd.evaluate", fake_evaluate)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 32, 32), np.uint8), y=np.arange(2))
    res = run(
        "evaluate",
        "cifar10_resnet20",
        "--no-pretrained",
        "--data",
        tmp_path / "d.npz",
        "--threads",
        3,
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert seen["torch"] == 3 and json.loads(res.stdout)["n"] == 2


def test_export_check_gets_threads(tmp_path, monkeypatch):
    seen = {}

    def fake_session_options(threads=None, **kwargs):
        seen.update(ort=threads, torch=torch.get_num_threads())
        return original(threads, **kwargs)

    original = check.session_options
    monkeypatch.setattr(check, "session_options", fake_session_options)
    out = tmp_path / "m.onnx"
    res = run(
        "export", "cifar10_resnet20", "--no-pretrained", "--out", out, "--threads", 2, "--json"
    )
    assert res.exit_code == 0, res.output
    assert seen == {"ort": 2, "torch": 2} and out.exists()


def test_threads_must_be_positive():
    res = run("evaluate", "m.onnx", "--data", "x.npz", "--threads", 0)
    assert res.exit_code == 2 and "Invalid value for '--threads'" in res.stderr
