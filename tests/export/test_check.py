"""The export check decides by the worst images and names the first quantizer that diverges."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dfq.errors import DfqError, DfqFailure
from dfq.export import ExportConfig, export_onnx, export_quantized, prepare_for_export
from dfq.export.check import check_against_torch, output_step
from dfq.export.export_config import weight_type_for_this_cpu
from tests.export.conftest import DATA


def _exported(model_calib, tmp_path):
    """A prepared copy of the fixture model and its ONNX file, written without the check."""
    model, calib = model_calib
    model = copy.deepcopy(model)
    prepare_for_export(model, calib)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, ExportConfig(check=False), DATA, calib)
    return model, calib, path


@pytest.mark.parametrize("which, weights", [("w8a8", "auto"), ("w4a4", "auto"), ("w8a8", "uint8")])
def test_correct_export_passes_the_strict_check(which, weights, request, tmp_path):
    """ "auto" picks the weight container whose kernels are exact on this CPU; "uint8" (the U8U8
    kernels) is exact on any CPU."""
    model, calib = request.getfixturevalue(which)
    cfg = ExportConfig(weight_type=weights)
    summary = export_quantized(copy.deepcopy(model), tmp_path, DATA, calib, cfg)
    assert summary["weight_type"] == (weights if weights != "auto" else weight_type_for_this_cpu())
    check = summary["check"]
    assert check["images"] == 64
    assert check["argmax_agreement"] == 1.0 and check["within_tolerance"] == 1.0
    assert check["max_dev_steps"] <= 1.0


@pytest.mark.parametrize(
    "which, tag", [("w8a8", "conv1.input_quantizer"), ("w4a4", "conv2.input_quantizer")]
)
def test_broken_quantizer_is_named(which, tag, request, tmp_path):
    model, calib, path = _exported(request.getfixturevalue(which), tmp_path)
    q = model.get_submodule(tag)
    # PyTorch no longer computes what was exported, from this node on. A 3x finer grid, not a
    # coarser one: 3 * round(u / 3) and round(u) are never more than one step apart, so a 3x
    # coarser grid shows only downstream, or where it clips.
    with torch.no_grad():
        q.scale.div_(3.0)
    with pytest.raises(DfqFailure) as err:
        check_against_torch(model, path, calib, ExportConfig())
    msg = str(err.value)
    assert f"first diverging node: {tag}/DQ (DequantizeLinear)" in msg, msg
    assert "\n" not in msg
    share = float(msg.split("(DequantizeLinear), ")[1].split("%")[0])
    assert 0.5 < share <= 100.0


class _OneImageOff(nn.Module):
    """The wrapped model, with image 0's first logit moved by `steps` output steps."""

    def __init__(self, inner: nn.Module, steps: float, step: float) -> None:
        super().__init__()
        self.inner, self.shift = inner, steps * step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x).clone()
        y[0, 0] += self.shift
        return y


def test_one_image_in_64_off_fails(w8a8, tmp_path):
    # The median image is exact, so the former median rule passed this; 63 / 64 < 99.5%.
    model, calib, path = _exported(w8a8, tmp_path)
    with torch.no_grad():
        step = output_step(model(calib))
    cfg = ExportConfig()
    assert check_against_torch(_OneImageOff(model, 0.0, step), path, calib, cfg)["images"] == 64
    with pytest.raises(
        DfqFailure, match=r"98\.4% within [\d.]+ output steps .* after the last quantizer"
    ):
        check_against_torch(_OneImageOff(model, 3.0, step), path, calib, cfg)
    # within tolerance, and the threshold is a setting
    check_against_torch(_OneImageOff(model, 3.0, step), path, calib, ExportConfig(tolerance=4.0))
    check_against_torch(_OneImageOff(model, 3.0, step), path, calib, ExportConfig(min_within=0.98))


@pytest.mark.parametrize("field", ["min_agreement", "min_within"])
def test_shares_outside_0_1_are_rejected(field):
    assert getattr(ExportConfig(), field) == 0.995
    with pytest.raises(DfqError, match=field):
        ExportConfig(**{field: 1.5})


def test_an_unknown_weight_type_is_rejected_with_the_choices():
    with pytest.raises(DfqError, match="auto, int8, uint8"):
        ExportConfig(weight_type="int4")


class _Float32Noise(nn.Module):
    """The wrapped model whose float32 logits round to a grid `ulp` wide (float64 ones do not)."""

    def __init__(self, inner: nn.Module, ulp: float) -> None:
        super().__init__()
        self.inner, self.offset = inner, ulp * 2**23  # float32's spacing at `offset` is `ulp`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.inner(x) + self.offset) - self.offset


def test_pytorch_float32_rounding_is_measured_against_float64(w8a8, tmp_path):
    # PyTorch's float32 arithmetic moves the logits by up to 2 output steps, the same model in
    # float64 does not: that noise is PyTorch's own and is allowed for; a deviation beyond it fails.
    model, calib, path = _exported(w8a8, tmp_path)
    with torch.no_grad():
        step = output_step(model(calib))
    noisy = _Float32Noise(model, 4 * step)
    with torch.no_grad():
        assert ((noisy(calib) - model(calib)).abs() > 1.2 * step).any()  # beyond the tolerance
    stats = check_against_torch(noisy, path, calib, ExportConfig())
    assert 1.0 < stats["torch_spread_steps"] <= 2.1 and stats["within_allowed"] >= 0.995
    with pytest.raises(DfqFailure, match="within"):
        check_against_torch(_OneImageOff(noisy, 8.0, step), path, calib, ExportConfig())
