"""One real accuracy check in the default suite (issue 14): the shared ResNet-20, quantized W8A8
data-free through the CLI with a small synthetic set and a short recipe, keeps its top-1 on the
lossless CIFAR-10 test images within 0.5 points."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dfq.cli import main

FP_TOP1 = 91.73  # ../shared/data/README.md, cifar10-resnet20 on lossless-846


def test_resnet20_w8a8_keeps_its_accuracy(tmp_path, resnet20_weights, lossless_846, one_thread):
    out = tmp_path / "r20-w8a8"
    sets = [
        "synth.num_images=64",
        "synth.batch_size=64",
        "synth.iters=30",
        "synth.student_steps=0",
        "quant.recon_iters=20",
        "quant.kd_iters=20",
    ]
    args = [
        "quantize",
        "cifar10_resnet20",
        "--weights",
        str(resnet20_weights),
        "--bits",
        "8",
        "--out",
        str(out),
        "--eval-data",
        str(lossless_846),
        "--no-export",
        "--quiet",
    ]
    for item in sets:
        args += ["--set", item]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    acc = json.loads((out / "report.json").read_text())["accuracy"]
    assert acc["fp"]["top1"] == FP_TOP1
    assert acc["quantized"]["top1"] >= FP_TOP1 - 0.5, acc
