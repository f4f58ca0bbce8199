import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from dfq.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "synth": {"num_images": 8, "batch_size": 8, "iters": 2},
                "quant": {
                    "calib_batch_size": 8,
                    "recon_iters": 2,
                    "recon_batch_size": 4,
                    "kd_iters": 2,
                    "kd_batch_size": 4,
                },
            }
        )
    )
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bits", "1"], "'1' is not one of '4', '8'"),
        (["--bits", "16"], "'16' is not one of '4', '8'"),
        (["--wbits", "4"], "--wbits and --abits go together"),
        (["--abits", "4"], "--wbits and --abits go together"),
        ([], "--bits 4|8, or --wbits W --abits A"),
        (["--bits", "4", "--wbits", "4", "--abits", "4"], "either --bits or --wbits"),
        (["--bits", "4", "--first-last-bits", "9"], "'same'"),
    ],
)
def test_bad_bits_are_usage_errors(args, message):
    res = run("quantize", "cifar10_resnet20", "--no-pretrained", *args)
    assert res.exit_code == 2
    assert message in res.output


def test_calib_of_wrong_shape_names_both_shapes(tmp_path):
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((4, 3, 16, 16), np.uint8))
    res = run(
        "quantize",
        "cifar10_resnet20",
        "--no-pretrained",
        "--bits",
        "4",
        "--calib",
        path,
        "--out",
        tmp_path / "out",
    )
    assert res.exit_code == 2
    assert "3x16x16" in res.stderr and "3x32x32" in res.stderr
    assert not (tmp_path / "out").exists()


def test_quantize_writes_outputs_refuses_existing_out_and_evaluates(tmp_path, tiny_recipe):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8), y=np.arange(16) % 10)
    out = tmp_path / "q"
    args = [
        "quantize",
        "cifar10_resnet20",
        "--no-pretrained",
        "--wbits",
        "4",
        "--abits",
        "8",
        "--recipe",
        tiny_recipe,
        "--out",
        out,
        "--calib",
        data,
    ]
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {
        "quantized.pt",
        "calibration.npz",
        "recipe.yaml",
        "calibration.png",
        "losses.png",
        "layers.png",
        "report.md",
        "report.json",
        "model.onnx",
    }
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["quant"]["wbits"] == 4 and report["config"]["quant"]["abits"] == 8
    assert {"prepare", "reconstruct", "distill", "bake"} <= report["stages"].keys()
    assert "torch" in report["versions"] and report["unquantized_layers"] == []
    assert yaml.safe_load((out / "recipe.yaml").read_text())["quant"]["recon_iters"] == 2
    res = run(*args)
    assert res.exit_code == 2 and "already exists" in res.stderr
    res = run("evaluate", out, "--data", data, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 16
    assert report["export"]["check"]["argmax_agreement"] >= 0.9
    onnx_res = run("evaluate", out / "model.onnx", "--data", data, "--json")
    assert onnx_res.exit_code == 0, onnx_res.output
    assert json.loads(onnx_res.stdout)["top1"] == json.loads(res.stdout)["top1"]


def test_quantize_synthesizes_without_calib(tmp_path, tiny_recipe):
    out = tmp_path / "q"
    res = run(
        "quantize",
        "cifar10_resnet20",
        "--no-pretrained",
        "--bits",
        "8",
        "--recipe",
        tiny_recipe,
        "--out",
        out,
        "--no-export",
    )
    assert res.exit_code == 0, res.output
    assert not (out / "model.onnx").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"] == "synthesized" and "synthesize" in report["stages"]
    assert report["config"]["synth"]["num_images"] == 8


def test_interrupt_leaves_no_output(tmp_path, tiny_recipe, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dfq.run.quantize_run.save_calibration", interrupted)
    out = tmp_path / "q"
    res = run(
        "quantize",
        "cifar10_resnet20",
        "--no-pretrained",
        "--bits",
        "8",
        "--recipe",
        tiny_recipe,
        "--out",
        out,
    )
    assert res.exit_code == 130
    assert not out.exists() and sorted(tmp_path.iterdir()) == [tmp_path / ".q.partial", tiny_recipe]
