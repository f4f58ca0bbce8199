"""The run's pictures: PNGs that decode, with the panels a user expects, and per-layer SQNR."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image
from torch import nn

from dfq.models.data_config import DataConfig
from dfq.quant.layers import quant_layers
from dfq.quant.pipeline import quantizers_disabled
from dfq.run.plots import (
    CIFAR10_CLASSES,
    calibration_figure,
    calibration_grid,
    class_names,
    layer_errors,
    layer_figure,
    layer_sqnr,
    loss_curves,
    loss_figure,
)
from tests.export.conftest import tiny_quantized

DATA = DataConfig(input_size=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=3)


def _calib() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 classes x 3 images at 8x8, labels 0 and 2 (class 1 absent), logits that favour class 0."""
    torch.manual_seed(0)
    images = torch.randn(6, 3, 8, 8)
    labels = torch.tensor([0, 2, 0, 2, 0, 2])
    logits = torch.tensor([[3.0, 0.0, 0.0]]).repeat(6, 1)
    return images, labels, logits


def _png(path) -> Image.Image:
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img


def test_calibration_grid_rows_are_classes(tmp_path):
    images, labels, logits = _calib()
    fig = calibration_figure(images, labels, DATA, logits, ["tench", "goldfish", "shark"])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == ["tench", "shark"]
    titles = {ax.get_title() for ax in shown}
    conf = torch.tensor([3.0, 0.0, 0.0]).softmax(0)[0].item()
    assert titles == {f"tench {conf:.2f}"}
    pixels = shown[0].images[0].get_array()
    assert pixels.min() >= 0 and pixels.max() <= 1  # denormalized and clamped

    path = calibration_grid(images, labels, DATA, logits, None, tmp_path / "calibration.png")
    img = _png(path)
    assert img.width >= 300 and img.height >= 200
    one_row = calibration_grid(
        images, labels, DATA, logits, None, tmp_path / "one.png", max_classes=1
    )
    assert _png(one_row).height < img.height  # a row per class shown
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically, nothing left over


def test_calibration_grid_limits():
    images, labels, logits = _calib()
    fig = calibration_figure(images, labels, DATA, logits, None, max_classes=1, per_class=2)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    assert next(ax.get_title() for ax in fig.axes if ax.images).startswith("0 ")  # index, no names
    unlabelled = calibration_figure(images, torch.full((6,), -1), DATA, logits, ["a", "b", "c"])
    assert [ax.get_ylabel() for ax in unlabelled.axes if ax.get_ylabel()] == ["predicted a"]


def test_class_names():
    assert class_names(nn.Linear(2, 10), 10, "cifar10_resnet20") == CIFAR10_CLASSES
    assert class_names(nn.Linear(2, 10), 10, "custom") is None
    names = class_names(nn.Linear(2, 1000), 1000)
    assert names is not None and len(names) == 1000 and names[0] == "tench"
    model = nn.Linear(2, 1001)
    model.pretrained_cfg = {"label_offset": 1}
    assert class_names(model, 1001)[:2] == ["background", "tench"]


def test_loss_curves(tmp_path):
    history = {
        "synthesize": [
            {"step": s, "bn": 3.0 / (s + 1), "ce": 1.0 / (s + 1), "rel": 0.5, "adv": 0.1}
            for s in range(20)
        ],
        "reconstruct": {"layer1.0": [0.5, 0.1], "layer1.1": [0.3, 0.05]},
        "distill": [{"step": s, "kd": 1.0 - s / 40, "rel": 0.2} for s in range(20)],
    }
    fig = loss_figure(history)
    assert len(fig.axes) == 3
    synth = fig.axes[0]
    assert {line.get_label() for line in synth.lines} == {"bn", "ce", "rel", "adv"}
    assert synth.get_yscale() == "log"
    assert len(fig.axes[1].patches) == 4  # before and after per block
    assert len(loss_figure({"distill": history["distill"]}).axes) == 1
    assert _png(loss_curves(history, tmp_path / "losses.png")).height >= 500

    empty = loss_figure({})
    assert not empty.axes and "no losses recorded" in empty.texts[0].get_text()
    assert _png(loss_curves({}, tmp_path / "empty.png")).width >= 300


def test_layer_errors(tmp_path):
    rows = [
        {"layer": "conv1", "sqnr_db": 30.0, "wbits": 8, "abits": 8},
        {"layer": "layer1.0.conv1", "sqnr_db": 12.5, "wbits": 4, "abits": 4},
        {"layer": "fc", "sqnr_db": 25.0, "wbits": 8, "abits": None},
    ]
    fig = layer_figure(rows)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["conv1 W8A8", "layer1.0.conv1 W4A4", "fc W8 float input"]
    assert "higher is better" in ax.get_title()
    bars = ax.patches
    assert [b.get_width() for b in bars] == [30.0, 12.5, 25.0]
    assert bars[0].get_facecolor() != bars[1].get_facecolor()  # coloured by weight bits
    img = _png(layer_errors(rows, tmp_path / "layers.png"))
    assert img.width >= 500 and img.height >= 150


def _fp_twin(qmodel: nn.Module) -> nn.Module:
    with quantizers_disabled(qmodel):
        return copy.deepcopy(qmodel)


@pytest.mark.usefixtures("one_thread")
def test_layer_sqnr():
    q4, calib = tiny_quantized(4)
    q8, _ = tiny_quantized(8)
    images = calib[:16]
    r4 = layer_sqnr(q4, _fp_twin(q4), images, batch_size=8)
    r8 = layer_sqnr(q8, _fp_twin(q8), images)
    assert [r["layer"] for r in r4] == list(quant_layers(q4))
    assert all(math.isfinite(r["sqnr_db"]) for r in r4 + r8)
    middle = [(a, b) for a, b in zip(r4, r8, strict=True) if a["wbits"] == 4]
    assert middle and all(b["sqnr_db"] > a["sqnr_db"] for a, b in middle)
    assert {r["wbits"] for r in r8} == {8}
    assert sum(r["sqnr_db"] for r in r8) > sum(r["sqnr_db"] for r in r4)
    assert r4[0]["abits"] in (None, 8)

    exact = layer_sqnr(q4, copy.deepcopy(q4), images, names=["head", "missing"])
    assert [r["layer"] for r in exact] == ["head"] and exact[0]["sqnr_db"] == 100.0
    assert all(
        q.enabled
        for layer in quant_layers(q4).values()
        for q in (layer.weight_quantizer, layer.input_quantizer)
        if q is not None
    )
