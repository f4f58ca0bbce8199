"""report.md: the sections a user reads, embedded pictures, the accuracy drop, missing parts
skipped."""

from __future__ import annotations

from dfq.run.report_md import render_report_md, write_report_md

PICTURES = {"calibration": "calibration.png", "losses": "losses.png", "layers": "layers.png"}


def _report() -> dict:
    """Shaped as `run_quantize` writes report.json, plus accuracy and method."""
    return {
        "command": "quantize",
        "model": "cifar10_resnet20",
        "seed": 0,
        "device": "cpu",
        "config": {
            "synth": {"iters": 500},
            "quant": {"wbits": 4, "abits": 4, "first_last_bits": 8},
        },
        "calibration": "synthesized",
        "num_calibration_images": 256,
        "method": "genie+qdrop",
        "stages": {
            "synthesize": {"seconds": 450.2, "losses": {"bn": 0.1234, "ce": 0.01, "adv": 0.2}},
            "prepare": {"seconds": 1.5, "kd_loss": 0.9},
            "reconstruct": {
                "seconds": 95.0,
                "kd_loss": 0.31,
                "block_losses": {"layer1.0": [1, 0.5]},
            },
            "distill": {"seconds": 60.0, "kd_first": 0.3, "kd_last": 0.12, "steps": 100},
            "bake": {"seconds": 0.1, "kd_loss": 0.12},
            "export": {"seconds": 3.0},
        },
        "unquantized_layers": ["pool (AdaptiveAvgPool2d): not a conv or linear"],
        "export": {
            "path": "out/model.onnx",
            "weight_type": "int8",
            "check": {
                "images": 256,
                "step": 0.05,
                "median_max_dev_steps": 0.42,
                "max_dev_steps": 1.7,
                "within_tolerance": 0.97,
                "argmax_agreement": 0.996,
            },
        },
        "accuracy": {
            "data": "cifar10-test.npz",
            "fp": {"top1": 91.73, "top5": 99.7},
            "quantized": {"top1": 88.5, "top5": 99.6},
            "onnx": {"top1": 88.25, "top5": 99.55},
        },
        "total_seconds": 612.0,
    }


def test_sections_and_pictures(tmp_path):
    path = write_report_md(_report(), tmp_path / "report.md", PICTURES)
    text = path.read_text()
    assert text.startswith("# dfq quantize: cifar10_resnet20")
    for heading in (
        "## Summary",
        "## Accuracy",
        "## Stages",
        "## Export check",
        "## Unquantized layers",
        "## Pictures",
    ):
        assert heading in text
    assert "**Protocol:** deploy" in text
    assert "W4A4, first and last layer 8-bit" in text
    assert "synthesized (256 images)" in text and "genie+qdrop" in text
    assert "| synthesize | 7m30s | bn 0.1234, ce 0.01, adv 0.2 |" in text
    assert "| distill | 1m00s | KD 0.3 → 0.12 |" in text
    assert "| reconstruct | 1m35s | KD 0.31 |" in text
    assert "top-1 agreement: 99.6%" in text and "median max deviation (steps): 0.42" in text
    assert "`pool` (AdaptiveAvgPool2d): not a conv or linear" in text
    assert "stored as int8 codes" in text and "--weight-type uint8" in text
    for name, file in PICTURES.items():
        assert f"![{name}]({file})" in text
    layers_caption = text.split("![layers](layers.png)")[1]
    assert "low SQNR" in layers_caption and "lose most" in layers_caption
    assert not list(tmp_path.glob(".*tmp*"))


def test_accuracy_table_with_drop():
    text = render_report_md(_report(), {})
    assert "On `cifar10-test.npz`" in text
    assert "| FP | 91.73 | 99.70 |  |  |" in text
    assert "| quantized (PyTorch) | 88.50 | 99.60 | 3.23 | 0.10 |" in text
    assert "| quantized (ONNX Runtime) | 88.25 | 99.55 | 3.48 | 0.15 |" in text


def test_missing_sections_tolerated(tmp_path):
    assert "## Summary" in render_report_md({}, {})
    minimal = {
        "model": "m",
        "stages": {"prepare": {"seconds": 1.0}, "odd": "not a dict"},
        "unquantized_layers": [],
        "export": {"path": "x"},
        "accuracy": {"fp": {"top1": 70.0}},
        "config": {},
    }
    text = write_report_md(minimal, tmp_path / "r.md", {"extra": "extra.png"}).read_text()
    assert "## Export check" not in text and "Protocol:** deploy" in text
    assert "| prepare | 1.0s |  |" in text
    assert "None: every conv and linear layer is quantized." in text
    assert "| FP | 70.00 | – |  |  |" in text and "### Extra" in text
    assert "![extra](extra.png)" in text and "## Pictures" in text
    no_fp = render_report_md({"accuracy": {"quantized": {"top1": 50.0, "top5": 80.0}}}, {})
    assert "| quantized (PyTorch) | 50.00 | 80.00 | – | – |" in no_fp
