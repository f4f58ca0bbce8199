import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from dfq.cli import main
from dfq.export.runtime import integer_conv_count, optimized_op_counts


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _npz(tmp_path, size=32, n=8):
    x = np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    path = tmp_path / f"d{size}.npz"
    np.savez(path, x=x, y=np.arange(n) % 10)
    return path


@pytest.fixture(scope="module")
def fp_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp") / "r20.onnx"
    res = run("export", "cifar10_resnet20", "--no-pretrained", "--out", path)
    assert res.exit_code == 0, res.output
    assert "fp32, opset 13" in res.stdout and "argmax agreement 100.0%" in res.stdout
    return path


def test_evaluate_onnx_json_with_latency(fp_onnx, tmp_path):
    res = run("evaluate", fp_onnx, "--data", _npz(tmp_path), "--latency", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 8 and out["providers"] == ["CPUExecutionProvider"]
    assert 0 < out["latency_ms_p50"] <= out["latency_ms_p90"] and out["throughput_b32"] > 0


def test_export_of_a_quantize_directory_is_fully_fused(tmp_path):
    from dfq.models import load_model
    from dfq.quant.insert import prepare
    from dfq.quant.quant_config import QuantConfig
    from dfq.quant.saved import save_quantized

    model, cfg = load_model("cifar10_resnet20", pretrained=False)
    prepare(model, QuantConfig(wbits=4, abits=4), [torch.randn(16, 3, 32, 32)])
    save_quantized(model, tmp_path / "quantized.pt", "cifar10_resnet20", cfg, QuantConfig())
    out = tmp_path / "m.onnx"
    # Random weights make a chaotic 4-bit network in which a single rounding tie grows to a few
    # output steps: the check (tests/export/test_check.py) is not what this test is about.
    res = run("export", tmp_path, "--out", out, "--json", "--no-check")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["quantization"] == "W4/8A4/8"
    counts = optimized_op_counts(out)
    assert integer_conv_count(counts) == 19  # every conv of ResNet-20
    assert counts["QLinearAdd"] == 9 and counts["Add"] == 0 and counts["Relu"] == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"\x00not onnx at all"), "is not a valid ONNX model"),
        (lambda p: p.write_text("ir_version: 7"), "is not a valid ONNX model"),
    ],
)
def test_corrupted_onnx_exit_2(tmp_path, make, message):
    bad = tmp_path / "bad.onnx"
    make(bad)
    res = run("evaluate", bad, "--data", _npz(tmp_path))
    assert res.exit_code == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output


def test_image_size_mismatch_names_both(fp_onnx, tmp_path):
    res = run("evaluate", fp_onnx, "--data", _npz(tmp_path, size=16))
    assert res.exit_code == 2
    assert "images are 3x16x16" in res.stderr and f"{fp_onnx} expects 3x32x32" in res.stderr


def test_unknown_provider_lists_available(fp_onnx, tmp_path):
    res = run(
        "evaluate", fp_onnx, "--data", _npz(tmp_path), "--providers", "NoSuchExecutionProvider"
    )
    assert res.exit_code == 2
    assert "unknown execution provider NoSuchExecutionProvider" in res.stderr
    assert "CPUExecutionProvider" in res.stderr


def test_onnx_without_dfq_metadata_exit_2(fp_onnx, tmp_path):
    proto = onnx.load(str(fp_onnx))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    res = run("evaluate", bare, "--data", _npz(tmp_path))
    assert res.exit_code == 2 and "has no dfq preprocessing metadata" in res.stderr


def test_int4_needs_opset_21(tmp_path):
    res = run(
        "export", "cifar10_resnet20", "--no-pretrained", "--out", tmp_path / "m.onnx", "--int4"
    )
    assert res.exit_code == 2 and "native INT4 needs opset 21" in res.stderr
