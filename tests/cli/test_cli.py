import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from dfq.cli import main
from dfq.errors import DfqError

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_commands():
    res = run("--help")
    assert res.exit_code == 0
    assert "evaluate" in res.output and "models" in res.output


def test_unknown_model_is_one_line_exit_2():
    res = run("evaluate", "resnt18", "--data", "x.npz")
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: unknown model 'resnt18'; did you mean resnet18?"
    assert "Traceback" not in res.output


def test_debug_shows_the_exception():
    res = run("--debug", "evaluate", "resnt18", "--data", "x.npz")
    assert res.exit_code != 0
    assert res.exception is not None and "resnt18" in str(res.exception)


def test_models_lists_sources():
    res = run("models", "cifar10_*")
    assert res.exit_code == 0
    assert "dfq (4):" in res.output and "cifar10_resnet56" in res.output


def _tiny_npz(tmp_path, x, y):
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path


def test_evaluate_json_is_one_object(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    path = _tiny_npz(tmp_path, x, np.arange(6))
    res = run("evaluate", "cifar10_resnet20", "--no-pretrained", "--data", path, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"top1", "top5", "n", "seconds"} <= out.keys() and out["n"] == 6


@pytest.mark.parametrize(
    "x, y, message",
    [
        (
            np.zeros((4, 3, 16, 16), np.uint8),
            np.arange(4),
            "images are 3x16x16 but the model expects 3x32x32",
        ),
        (np.zeros((4, 3, 32, 32), np.uint8), np.array([0, 1, 2, 10]), "labels range over 0..10"),
        (np.zeros((4, 32, 32), np.uint8), np.arange(4), "non-empty 4-D array"),
    ],
)
def test_bad_data_exit_2(tmp_path, x, y, message):
    res = run(
        "evaluate", "cifar10_resnet20", "--no-pretrained", "--data", _tiny_npz(tmp_path, x, y)
    )
    assert res.exit_code == 2
    assert message in res.stderr and "Traceback" not in res.output


def test_bad_weights_exit_2(tmp_path):
    junk = tmp_path / "junk.th"
    junk.write_bytes(b"\x00" * 64)
    res = run("evaluate", "cifar10_resnet20", "--weights", junk, "--data", "x.npz")
    assert res.exit_code == 2 and "is not a PyTorch checkpoint" in res.stderr


def test_models_explains_custom_factories():
    res = run("models", "resnet18")
    assert "package.module:factory" in res.output and "torchvision (" in res.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input-size", "0"], "Invalid value for '--input-size'"),
        (["--input-size", "3 a 2"], "Invalid value for '--input-size'"),
        (["--mean", "0.5,zero,0.5"], "Invalid value for '--mean'"),
        (["--crop-pct", "1.5"], "Invalid value for '--crop-pct'"),
    ],
)
def test_bad_preprocessing_flags_are_usage_errors(flags, message):
    res = run("evaluate", "cifar10_resnet20", "--no-pretrained", "--data", "x.npz", *flags)
    assert res.exit_code == 2 and message in res.output


def test_mean_of_wrong_length_is_one_line(tmp_path):
    x = np.zeros((2, 3, 32, 32), np.uint8)
    res = run(
        "evaluate",
        "cifar10_resnet20",
        "--no-pretrained",
        "--data",
        _tiny_npz(tmp_path, x, np.arange(2)),
        "--mean",
        "0.5,0.5",
    )
    assert res.exit_code == 2 and "mean and std need 3 values" in res.stderr


def test_input_size_override_lets_a_224_model_read_32px_data(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    path = _tiny_npz(tmp_path, x, np.arange(3))
    res = run("evaluate", "torchvision:resnet18", "--no-pretrained", "--data", path)
    assert res.exit_code == 2 and "pass --input-size" in res.stderr
    res = run(
        "evaluate",
        "torchvision:resnet18",
        "--no-pretrained",
        "--data",
        path,
        "--input-size",
        "32",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 3


def test_pickled_model_file_explains_the_risk(tmp_path):
    import torch

    torch.save(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), tmp_path / "m.pt"
    )
    x = np.zeros((2, 3, 32, 32), np.uint8)
    data = _tiny_npz(tmp_path, x, np.arange(2))
    res = run("evaluate", tmp_path / "m.pt", "--data", data, "--input-size", "32")
    assert res.exit_code == 2 and "--trust-checkpoint" in res.stderr and "runs code" in res.stderr
    res = run(
        "evaluate", tmp_path / "m.pt", "--data", data, "--input-size", "32", "--trust-checkpoint"
    )
    assert res.exit_code == 0, res.output


def test_suggestion_prefers_the_dfq_zoo():
    res = run("quantize", "resnt20", "--bits", "8")
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: unknown model 'resnt20'; did you mean cifar10_resnet20?"


def test_text_file_as_weights_says_what_it_is(tmp_path):
    text = tmp_path / "x.pth"
    text.write_text("hello world, these are not weights\n")
    res = run("evaluate", "cifar10_resnet20", "--weights", text, "--data", "x.npz")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"error: {text} is not a PyTorch checkpoint: it looks like a "
        "text file (starts with 'hello world, these a...')"
    )


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "resnt18", "--data", "x.npz"],
        ["quantize", "resnt18", "--bits", "8"],
        ["synthesize", "resnt18"],
        ["export", "resnt18", "--out", "x.onnx"],
    ],
)
def test_debug_after_the_command_shows_the_exception(command):
    res = run(*command, "--debug")
    assert res.exit_code != 0 and isinstance(res.exception, DfqError)
    assert "resnt18" in str(res.exception)
    plain = run(*command)
    assert plain.exit_code == 2 and len(plain.stderr.strip().splitlines()) == 1
    assert isinstance(plain.exception, SystemExit)


def test_debug_traceback_in_a_real_process():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "dfq", "evaluate", "resnt18", "--data", "x.npz"]
    with_debug = subprocess.run(
        [*args, "--debug"], env=env, capture_output=True, text=True, check=False
    )
    assert with_debug.returncode == 1 and "Traceback" in with_debug.stderr
    assert "DfqError: unknown model 'resnt18'" in with_debug.stderr


def _commands():
    return [(name, cmd) for name, cmd in main.commands.items()]


@pytest.mark.parametrize("name, command", _commands())
def test_help_lists_every_choice(name, command):
    res = run(name, "--help")
    assert res.exit_code == 0
    help_text = " ".join(res.output.split())
    for param in command.params:
        if isinstance(param.type, click.Choice):
            assert "|".join(param.type.choices) in help_text, (name, param.name)
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, (name, param.name)


SHARED = (
    "weights",
    "pretrained",
    "num_classes",
    "input_size",
    "mean",
    "std",
    "interpolation",
    "crop_pct",
    "num_images",
    "recipe",
    "sets",
    "seed",
    "device",
    "overwrite",
    "threads",
    "debug",
)


def test_shared_options_have_one_type_and_help():
    seen: dict = {}
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and param.name in SHARED:
                this = (param.opts, param.type.to_info_dict(), param.help, param.default)
                assert seen.setdefault(param.name, this) == this, (name, param.name)
    assert {"num_images", "seed", "recipe", "sets", "threads", "debug"} <= seen.keys()
