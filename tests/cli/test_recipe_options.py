"""Issue 19: a partial --recipe layers over the shipped recipe; --set changes single values."""

import json

import onnx
import onnxruntime
import pytest
import yaml
from click.testing import CliRunner

from dfq.cli import main
from dfq.config import load_recipe
from dfq.synth.synth_config import SynthConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def record_quantize(monkeypatch):
    """Replace the quantize run by a recorder of the configs the command resolved."""
    seen = {}

    def fake_run(model, name, data_config, cfg, out, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        return {
            "stages": {},
            "total_seconds": 0.0,
            "num_calibration_images": 0,
            "unquantized_layers": [],
        }

    monkeypatch.setattr("dfq.cli.quantize_cmd.run_quantize", fake_run)
    return seen


QUANTIZE = ["quantize", "cifar10_resnet20", "--no-pretrained", "--bits", "8"]


def test_partial_recipe_layers_over_the_shipped_one_and_is_written(tmp_path):
    cifar = load_recipe("cifar")
    assert cifar["synth"]["lr_generator"] != SynthConfig().lr_generator  # else this proves nothing
    recipe = tmp_path / "partial.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "synth": {"num_images": 16, "batch_size": 8, "iters": 50},
                "quant": {
                    "calib_batch_size": 8,
                    "recon_iters": 2,
                    "recon_batch_size": 4,
                    "kd_batch_size": 4,
                },
            }
        )
    )
    out = tmp_path / "q"
    res = run(
        *QUANTIZE,
        "--recipe",
        recipe,
        "--set",
        "synth.iters=2",
        "--set",
        "quant.kd_iters=1",
        "-n",
        8,
        "--no-export",
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    written = yaml.safe_load((out / "recipe.yaml").read_text())
    synth, quant = written["synth"], written["quant"]
    assert synth["num_images"] == 8  # the command's own option wins over the file
    assert synth["batch_size"] == 8 and quant["recon_iters"] == 2  # the file over the shipped one
    assert synth["iters"] == 2 and quant["kd_iters"] == 1  # --set over the file
    for key in ("lr_generator", "latent_dim", "generator_width", "reinit_generator"):
        assert synth[key] == cifar["synth"][key], key  # untouched: the shipped cifar recipe
    assert quant["kd_lr"] == cifar["quant"]["kd_lr"]
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == written
    assert report["versions"]["onnx"] == onnx.__version__
    assert report["versions"]["onnxruntime"] == onnxruntime.__version__


def test_exponent_numbers_in_a_recipe_file_are_numbers(tmp_path, record_quantize):
    """PyYAML reads `1e-5` as a string (YAML 1.1 wants `1.0e-5`); a hand-written recipe uses it."""
    recipe = tmp_path / "lr.yaml"
    recipe.write_text("quant:\n  kd_lr: 3e-5\n  gptq_damp: 1E-3\nsynth:\n  lr_pixels: .5e-1\n")
    res = run(*QUANTIZE, "--recipe", recipe)
    assert res.exit_code == 0, res.output
    quant, synth = record_quantize["cfg"], record_quantize["synth_cfg"]
    assert quant.kd_lr == pytest.approx(3e-5) and quant.gptq_damp == pytest.approx(1e-3)
    assert synth.lr_pixels == pytest.approx(0.05)


def test_shipped_recipe_name_is_the_base(record_quantize):
    res = run(*QUANTIZE, "--recipe", "imagenet", "--set", "quant.kd_iters=5")
    assert res.exit_code == 0, res.output
    imagenet = load_recipe("imagenet")
    assert record_quantize["synth_cfg"].iters == imagenet["synth"]["iters"]
    assert record_quantize["cfg"].recon_iters == imagenet["quant"]["recon_iters"]
    assert record_quantize["cfg"].kd_iters == 5


def test_set_values_are_yaml(record_quantize):
    res = run(
        *QUANTIZE,
        "--set",
        "synth.betas=[0.4, 0.9]",
        "--set",
        "synth.relation=false",
        "--set",
        "quant.kd_lr=2e-5",
        "--set",
        "quant.act_init=minmax",
        "--set",
        "synth.seed=7",
        "--set",
        "quant.amp=off",  # YAML reads a bare off as false: still the mode 'off'
        "--set",
        "synth.amp=off",
    )
    assert res.exit_code == 0, res.output
    synth, quant = record_quantize["synth_cfg"], record_quantize["cfg"]
    assert quant.amp == "off" and synth.amp == "off"
    assert synth.betas == (0.4, 0.9) and synth.relation is False and synth.seed == 7
    assert quant.kd_lr == pytest.approx(2e-5) and quant.act_init == "minmax"
    assert record_quantize["seed"] == 7  # no --seed: the run uses the recipe's seed
    assert quant.wbits == 8  # --bits still wins


@pytest.mark.parametrize(
    "item, message",
    [
        ("synth.itres=3", "error: unknown key 'itres' in synth (--set); did you mean 'iters'?"),
        (
            "quant.kd_iter=0",
            "error: unknown key 'kd_iter' in quant (--set); did you mean 'kd_iters'?",
        ),
        ("synht.iters=3", "error: unknown section 'synht' in --set; did you mean 'synth'?"),
    ],
)
def test_unknown_set_key_is_one_line_with_a_suggestion(item, message):
    for command in (QUANTIZE, ["synthesize", "cifar10_resnet20", "--no-pretrained"]):
        res = run(*command, "--set", item)
        assert res.exit_code == 2
        assert res.stderr.strip() == message and "Traceback" not in res.output


@pytest.mark.parametrize(
    "item",
    [
        "iters=3",
        "synth.iters",
        "synth.iters=",
        ".iters=3",
        "synth.=3",
        "synth.betas=[0.5",
        "synth.rdskd..iters=3",
    ],
)
def test_malformed_set_is_a_usage_error(item):
    res = run(*QUANTIZE, "--set", item)
    assert res.exit_code == 2
    assert "Invalid value for '--set'" in res.stderr and "Traceback" not in res.output


def test_set_reaches_into_a_nested_section_and_keeps_its_other_values(record_quantize):
    cifar = load_recipe("cifar")["synth"]["rdskd"]
    res = run(*QUANTIZE, "--method", "rdskd", "--set", "synth.rdskd.entropy_weight=2.5")
    assert res.exit_code == 0, res.output
    rdskd = record_quantize["synth_cfg"].rdskd
    assert rdskd.entropy_weight == 2.5
    assert rdskd.iters == cifar["iters"] and rdskd.lr_generator == cifar["lr_generator"]
    res = run(*QUANTIZE, "--set", "synth.rdskd.entropy_wieght=5")
    assert res.exit_code == 2
    assert "unknown key 'entropy_wieght' in synth.rdskd" in res.stderr
    assert "did you mean 'entropy_weight'?" in res.stderr


def test_bad_set_value_is_refused_by_the_config(record_quantize):
    res = run(*QUANTIZE, "--set", "synth.iters=0")
    assert res.exit_code == 2 and "iters must be an integer >= 1" in res.stderr


def test_unknown_section_in_recipe_file_suggests(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("quantt:\n  kd_iters: 0\n")
    res = run(*QUANTIZE, "--recipe", recipe)
    assert res.exit_code == 2
    assert f"unknown section 'quantt' in {recipe}; did you mean 'quant'?" in res.stderr
