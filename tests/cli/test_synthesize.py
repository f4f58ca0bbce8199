import json

import pytest
from click.testing import CliRunner

from dfq.calibration import load_calibration
from dfq.cli import main

TINY = ["cifar10_resnet20", "--no-pretrained", "-n", "4", "--batch-size", "4", "--iters", "2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_synthesize_writes_set_and_report(tmp_path):
    out = tmp_path / "c.npz"
    res = run("synthesize", *TINY, "--out", out, "--seed", 3)
    assert res.exit_code == 0, res.output
    calib = load_calibration(out)
    assert calib.images.shape == (4, 3, 32, 32) and calib.metadata["seed"] == 3
    report = json.loads((tmp_path / "c.npz.report.json").read_text())
    assert report["synth"]["iters"] == 2 and report["model"] == "cifar10_resnet20"
    evaluated = run("evaluate", "cifar10_resnet20", "--no-pretrained", "--data", out, "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["n"] == 4
    again = run("synthesize", *TINY, "--out", out)
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert run("synthesize", *TINY, "--out", out, "--overwrite").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iters", "-1"], "iters must be an integer >= 1"),
        (["--recipe", "cifra"], "did you mean 'cifar'?"),
        (["--method", "rgl"], "unknown synthesis method 'rgl'; did you mean 'rgal'?"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "c.npz"
    res = run("synthesize", "cifar10_resnet20", "--no-pretrained", "--out", out, *args)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr
    assert "Traceback" not in res.output and not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "0"], "Invalid value for '-n' / '--num-images': 0 is not in the range x>=1"),
        (["--batch-size", "-3"], "Invalid value for '--batch-size': -3 is not in the range x>=1"),
        (["--format", "tiff"], "'tiff' is not one of 'npz', 'png', 'onnx-pb'"),
        (["--param", "gan"], "'gan' is not one of 'generator', 'pixels'"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path, args, message):
    res = run(
        "synthesize", "cifar10_resnet20", "--no-pretrained", "--out", tmp_path / "c.npz", *args
    )
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output


def test_model_without_batchnorm_explains_and_suggests_real_images(tmp_path):
    out = tmp_path / "c.npz"
    res = run("synthesize", "torchvision:squeezenet1_1", "--no-pretrained", "--out", out)
    assert res.exit_code == 2
    assert "no BatchNorm layers" in res.stderr and "--calib" in res.stderr
