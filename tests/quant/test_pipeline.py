import copy
from dataclasses import replace

import pytest
import torch

from dfq.models import load_model
from dfq.quant.distill import distill, mean_kd_loss
from dfq.quant.insert import prepare
from dfq.quant.layers import quant_layers
from dfq.quant.pipeline import quantize_
from dfq.quant.quant_config import QuantConfig
from dfq.quant.reconstruct import units

TINY = {
    "calib_batch_size": 8,
    "recon_iters": 2,
    "recon_batch_size": 4,
    "kd_iters": 2,
    "kd_batch_size": 4,
}


def test_distillation_lowers_the_kd_loss(resnet20_weights):
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    teacher = copy.deepcopy(model)
    calib = torch.randn(64, 3, 32, 32)
    cfg = QuantConfig(
        wbits=3, abits=3, kd_iters=15, kd_batch_size=32, kd_lr=1e-3, relation_weight=0.1
    )
    prepare(model, cfg, [calib])
    before = mean_kd_loss(model, teacher, calib, cfg.kd_temperature)
    summary = distill(model, teacher, calib, cfg, progress=False)
    after = mean_kd_loss(model, teacher, calib, cfg.kd_temperature)
    assert after < 0.8 * before
    assert summary["kd_last"] < summary["kd_first"]


def test_quantize_bakes_weights_and_reconstruction_lowers_block_error(resnet20_weights):
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    cfg = QuantConfig(
        weight_rounding="nearest",
        calib_batch_size=32,
        recon_iters=20,
        recon_batch_size=16,
        kd_iters=0,
    )
    report = quantize_(model, cfg, torch.randn(32, 3, 32, 32), progress=False)
    rec = report["stages"]["reconstruct"]
    assert rec["kd_loss"] < report["stages"]["prepare"]["kd_loss"]
    first, last = rec["block_losses"]["layer2.1"]
    assert last < first
    for layer in quant_layers(model).values():
        q = layer.weight_quantizer
        s = q.scale.detach().view(-1, *([1] * (layer.weight.dim() - 1)))
        assert torch.equal(
            layer.weight, torch.clamp(torch.round(layer.weight / s), q.qmin, q.qmax) * s
        )
        assert layer.rounding is None


def test_reconstruction_after_gptq_aims_at_the_fp_model_not_the_rounded_one(resnet20_weights):
    # 3-bit weights, 8-bit activations: measured against the FP model, each block's error before
    # reconstruction is mostly weight error; against the GPTQ-rounded model it would be the small
    # activation error alone. The first block's input is the same in both, so its "before" must
    # be the error of its rounded weights, as GPTQ measured it.
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    fp = copy.deepcopy(model)
    cfg = QuantConfig(wbits=3, abits=8, calib_batch_size=32, gptq_images=32, kd_iters=0)
    cfg = replace(cfg, recon_iters=2, recon_batch_size=16)
    calib = torch.randn(32, 3, 32, 32)
    report = quantize_(model, cfg, calib, teacher=fp, progress=False)
    gptq_after = report["stages"]["gptq"]["unit_losses"]["layer1.0"][1]
    rec_before = report["stages"]["reconstruct"]["block_losses"]["layer1.0"][0]
    assert rec_before > 0.5 * gptq_after > 0


def test_reconstruction_can_move_soft_gptq_rounding_and_not_settled_rounding(resnet20_weights):
    # GPTQ's settled grid points sit deep in AdaRound's rectified sigmoid (h = 0.01 or 0.99):
    # a short budget cannot flip one. Kept soft, each starts at its own fraction: the codes GPTQ
    # chose come first, and reconstruction then changes some and lowers the block errors more.
    calib = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    moved, gain, gptq_losses = {}, {}, {}
    for soft in (False, True):
        torch.manual_seed(0)
        model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
        cfg = QuantConfig(
            wbits=3, abits=8, calib_batch_size=32, gptq_images=32, kd_iters=0, gptq_soft=soft
        )
        cfg = replace(cfg, recon_iters=30, recon_batch_size=16, recon_lr_round=0.01)
        report = quantize_(model, cfg, calib, progress=False)
        gptq_losses[soft] = [
            a for pair in report["stages"]["gptq"]["unit_losses"].values() for a in pair
        ]
        rec = report["stages"]["reconstruct"]["block_losses"]
        gain[soft] = sum(b - a for b, a in rec.values()) / sum(b for b, _ in rec.values())
        moved[soft] = len(report["stages"]["reconstruct"]["kept_nearest"]) < len(rec)
    assert gptq_losses[True] == pytest.approx(gptq_losses[False], rel=1e-3)  # the same codes
    assert gain[True] > 0.01  # 0.02 here on noise images; settled: 0.0001
    assert gain[True] > 10 * gain[False]
    assert moved[True]


@pytest.mark.parametrize(
    "name, size",
    [
        ("torchvision:resnet18", 32),
        ("torchvision:mobilenet_v2", 32),
        ("timm:resnet18", 32),
        ("timm:mobilenetv3_small_100", 32),
        pytest.param("torchvision:resnet50", 32, marks=pytest.mark.slow),
        pytest.param("torchvision:efficientnet_b0", 32, marks=pytest.mark.slow),
        pytest.param("torchvision:regnet_x_400mf", 32, marks=pytest.mark.slow),
    ],
)
def test_quantize_smoke_on_imagenet_architectures(name, size):
    torch.manual_seed(0)
    model, _ = load_model(name, pretrained=False)
    ref = copy.deepcopy(model).eval()
    calib = torch.randn(8, 3, size, size)
    report = quantize_(model, QuantConfig(**TINY), calib, progress=False)
    assert report["unquantized_layers"] == []
    assert not report["stages"]["reconstruct"]["skipped"]
    layers = quant_layers(model)
    order = list(report["bits"])
    assert report["bits"][order[0]] == [8, 8] and report["bits"][order[-1]] == [8, 8]
    assert len(units(model)) > 3 and len(layers) == len(order)
    with torch.no_grad():
        out = model(calib)
    assert out.shape == ref(calib).shape and torch.isfinite(out).all()


def test_a_block_that_reconstruction_worsens_keeps_nearest_rounding(resnet20_weights, monkeypatch):
    """Learned rounding is kept only where it beats nearest rounding on the calibration images."""
    from dfq.quant import reconstruct as rec_mod

    def wreck(block, *args):  # a reconstruction gone wrong: every weight flipped
        for layer in rec_mod.unit_layers(block):
            layer.weight.data.neg_()
            layer.bake()

    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    cfg = QuantConfig(weight_rounding="nearest", calib_batch_size=32, recon_iters=2, kd_iters=0)
    calib = torch.randn(32, 3, 32, 32)
    nearest = copy.deepcopy(model)
    quantize_(nearest, replace(cfg, reconstruct=False), calib, progress=False)
    monkeypatch.setattr(rec_mod, "_reconstruct_unit", wreck)
    report = quantize_(model, cfg, calib, progress=False)["stages"]["reconstruct"]
    assert report["kept_nearest"] == list(report["block_losses"])
    for name, layer in quant_layers(model).items():
        assert torch.equal(layer.weight, quant_layers(nearest)[name].weight), name


@pytest.mark.parametrize(
    "bits, kd_at_8bit, protocol, distills",
    [
        ((8, 8), False, "deploy", False),
        ((8, 8), True, "deploy", True),
        ((4, 8), False, "deploy", True),
        ((8, 4), False, "deploy", True),
        ((8, 8), False, "gdfq", False),
    ],
)
def test_distillation_is_skipped_only_when_every_layer_is_8_bit(
    bits, kd_at_8bit, protocol, distills
):
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", pretrained=False)
    cfg = QuantConfig(
        wbits=bits[0], abits=bits[1], protocol=protocol, kd_at_8bit=kd_at_8bit, **TINY
    )
    report = quantize_(model, cfg, torch.randn(8, 3, 32, 32), progress=False)
    assert ("distill" in report["stages"]) == distills
    assert ("distill_skipped" in report) != distills


def test_an_8_bit_model_with_4_bit_edges_still_distills():
    cfg = QuantConfig(wbits=8, abits=8, first_last_bits=4)
    assert cfg.distills
