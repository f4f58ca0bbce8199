import copy

import pytest
import torch
from torch import nn

from dfq.errors import DfqError
from dfq.models import load_model
from dfq.quant.distill import mean_kd_loss
from dfq.quant.gptq import (
    Hessian,
    active_mask,
    gptq,
    gptq_layer,
    gptq_round,
    layer_columns,
    least_squares_target,
)
from dfq.quant.insert import prepare
from dfq.quant.layers import QuantConv2d, QuantLinear, quant_layers
from dfq.quant.pipeline import quantize_
from dfq.quant.quant_config import QuantConfig


def _nearest(w, s, qmin, qmax):
    return torch.clamp(torch.round(w / s), qmin, qmax) * s


def _correlated(d, n, gen):
    mix = torch.randn(d, d, generator=gen)
    return mix @ torch.randn(d, n, generator=gen) + 0.5


def _layer_problem(seed, d, out, n):
    """Correlated inputs x (d, n), weights (1, out, d) and bias, per-row 4-bit steps, their H."""
    gen = torch.Generator().manual_seed(seed)
    x = _correlated(d, n, gen)
    w = torch.randn(1, out, d, generator=gen) * 0.1
    b = torch.randn(1, out, generator=gen) * 0.1
    acc = Hessian(with_bias=True)
    acc.add(x[None])
    return x, w, b, w.abs().amax(2, keepdim=True) / 7, acc


def test_gptq_lowers_the_output_error_of_nearest_rounding_and_stays_on_the_grid():
    x, w, b, s, acc = _layer_problem(0, 32, 16, 4000)
    qw, qb = gptq_round(w, acc.value(), s, -8, 7, b)
    ref = w[0] @ x + b[0, :, None]
    err_near = (_nearest(w, s, -8, 7)[0] @ x + b[0, :, None] - ref).pow(2).mean()
    err_gptq = (qw[0] @ x + qb[0, :, None] - ref).pow(2).mean()
    assert err_gptq < 0.7 * err_near
    codes = qw / s
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= -8 and codes.round().max() <= 7


def test_soft_gptq_keeps_the_codes_and_the_values_before_rounding():
    _, w, b, s, acc = _layer_problem(1, 24, 8, 3000)
    hard_w, hard_b = gptq_round(w, acc.value(), s, -8, 7, b)
    soft_w, soft_b = gptq_round(w, acc.value(), s, -8, 7, b, soft=True)
    assert torch.equal(_nearest(soft_w, s, -8, 7), _nearest(hard_w, s, -8, 7))
    assert torch.allclose(soft_b, hard_b)
    frac = (soft_w / s - (soft_w / s).round()).abs()
    assert frac.max() > 0.3  # off the grid: how close each rounding call was
    # the first column GPTQ rounds (largest Hessian diagonal) has had nothing pushed onto it
    first = int(acc.value()[0, :24, :24].diagonal().argmax())
    assert torch.allclose(soft_w[0, :, first], w[0, :, first], atol=1e-6)


def test_the_masked_hessian_is_each_channels_own_by_hand():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 300, generator=gen)  # two groups, d = 5
    mask = torch.rand(2, 3, 300, generator=gen) > 0.5  # three output channels each
    acc = Hessian(with_bias=True)
    acc.add(x, mask=mask)
    h = acc.value()
    assert h.shape == (2, 3, 6, 6)
    for g in range(2):
        for o in range(3):
            cols = torch.cat([x[g], torch.ones(1, 300)])[:, mask[g, o]]
            assert torch.allclose(h[g, o], (cols @ cols.T).double() / 300, atol=1e-5)


def test_active_gptq_lowers_the_error_after_a_relu6():
    """A layer read by a ReLU6: rounding against the positions the ReLU6 passes beats rounding
    against all of them, measured after the ReLU6 (on six random problems)."""
    ratios = []
    for seed in range(6):
        x, w, b, s, plain = _layer_problem(seed, 32, 16, 4000)
        linear = nn.Linear(32, 16)
        with torch.no_grad():
            linear.weight.copy_(w[0])
            linear.bias.copy_(b[0])
        layer = QuantLinear.from_float(linear, 4, None)
        mask = active_mask(layer, x[None], 6.0)
        y = w[0] @ x + b[0, :, None]
        assert torch.equal(mask[0], (y > 0) & (y < 6))
        assert 0.3 < float(mask.float().mean()) < 0.7  # the problem has both kinds of position
        active = Hessian(with_bias=True)
        active.add(x[None], mask=mask)
        ref = (w[0] @ x + b[0, :, None]).clamp(0, 6)
        errors = []
        for h, shape in ((plain.value(), (1, 16)), (active.value()[0], (16, 1))):
            qw, qb = gptq_round(
                w.reshape(*shape, 32), h, s.reshape(*shape, 1), -8, 7, b.reshape(shape)
            )
            y = qw.reshape(16, 32) @ x + qb.reshape(16, 1)
            errors.append(float((y.clamp(0, 6) - ref).pow(2).mean()))
        ratios.append(errors[1] / errors[0])
    assert max(ratios) < 1.0 and sum(ratios) / len(ratios) < 0.95


def test_the_bias_column_absorbs_a_constant_inputs_rounding_error():
    # one weight, input always 3: the output shift (w - q) * 3 moves into the bias exactly
    w, b = torch.tensor([[[0.34]]]), torch.tensor([[0.1]])
    s = torch.tensor([[[0.25]]])
    acc = Hessian(with_bias=True)
    acc.add(torch.full((1, 1, 50), 3.0))
    qw, qb = gptq_round(w, acc.value(), s, -8, 7, b, damp=1e-9)
    assert qw.item() == 0.25
    assert abs(qb.item() - (0.1 + (0.34 - 0.25) * 3.0)) < 1e-6


def test_the_float_target_undoes_a_known_input_error_by_hand():
    # the quantized input is the float one halved: the least-squares weights are twice the float
    # ones, and the bias row (constant 1 in both) keeps the bias
    gen = torch.Generator().manual_seed(0)
    x_fp = torch.randn(1, 3, 500, generator=gen)
    w = torch.tensor([[[0.5, -1.0, 2.0, 0.3]]])  # three weights and the bias
    acc = Hessian(with_bias=True)
    acc.add(x_fp / 2, x_fp)
    fit = least_squares_target(w, acc.value(), acc.cross_value(), damp=1e-9)
    assert torch.allclose(fit, torch.tensor([[[1.0, -2.0, 4.0, 0.3]]]), atol=1e-5)


def test_gptq_to_the_float_target_corrects_a_layers_input_quantization():
    torch.manual_seed(0)
    lin = nn.Linear(24, 8)
    q = QuantLinear.from_float(lin, 4, 3, input_signed=False)
    x = _correlated(24, 2000, torch.Generator().manual_seed(1)).T.abs()
    q.input_quantizer.set_scale(0.3 * float(x.max()) / 7)  # clips: an error correlated with x
    q.weight_quantizer.set_scale(lin.weight.detach().abs().amax(1) / 7)
    ref = lin(x)
    both = {}
    for target in ("weights", "float"):
        layer = copy.deepcopy(q)
        acc = Hessian(with_bias=True)
        acc.add(layer_columns(layer, x), x.T[None] if target == "float" else None)
        gptq_layer(layer, acc.value(), 0.01, acc.cross_value())
        both[target] = (layer(x) - ref).pow(2).mean()
    assert both["float"] < 0.8 * both["weights"]


def test_layer_columns_reproduce_a_depthwise_and_a_strided_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 9, 9)
    for conv in (nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 3, stride=2)):
        q = QuantConv2d.from_float(conv, 4, None)
        cols = layer_columns(q, x)
        g = conv.groups
        y = torch.einsum("god,gdn->gon", q.weight.reshape(g, conv.out_channels // g, -1), cols)
        ref = nn.functional.conv2d(x, q.weight, None, conv.stride, conv.padding, 1, g)
        b, c, hh, ww = ref.shape
        got = y.reshape(g, -1, b, hh * ww).permute(2, 0, 1, 3).reshape(b, c, hh, ww)
        assert torch.allclose(got, ref, atol=1e-5)


def test_gptq_layer_on_a_depthwise_conv_beats_nearest_on_its_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    q = QuantConv2d.from_float(conv, 3, None)
    q.weight_quantizer.set_scale(q.weight.detach().abs().flatten(1).amax(1) / 3)
    # smooth inputs (neighbouring pixels correlated), as images and feature maps are
    x = nn.functional.avg_pool2d(torch.randn(16, 6, 12, 12), 3, 1) * 3
    ref = nn.functional.conv2d(x, conv.weight, conv.bias, 1, 1, 1, 6)
    near = copy.deepcopy(q)
    near.bake()
    acc = Hessian(with_bias=True)
    acc.add(layer_columns(q, x))
    gptq_layer(q, acc.value(), damp=0.01)
    assert (q(x) - ref).pow(2).mean() < 0.8 * (near(x) - ref).pow(2).mean()


def test_gptq_on_a_model_lowers_unit_errors_and_the_kd_loss(resnet20_weights):
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    teacher = copy.deepcopy(model)
    calib = torch.randn(32, 3, 32, 32)
    cfg = QuantConfig(wbits=3, abits=8, calib_batch_size=16)
    prepare(model, cfg, [calib])
    before = mean_kd_loss(model, teacher, calib, cfg.kd_temperature)
    res = gptq(model, calib, batch_size=16, max_images=32, progress=False)
    assert mean_kd_loss(model, teacher, calib, cfg.kd_temperature) < 0.8 * before
    assert all(after <= first for first, after in res["unit_losses"].values())
    improved = [k for k, (first, after) in res["unit_losses"].items() if after < 0.9 * first]
    assert len(improved) >= len(res["unit_losses"]) // 2
    for layer in quant_layers(model).values():
        s = layer.weight_quantizer.step(layer.weight)
        assert torch.allclose(layer.weight / s, (layer.weight / s).round(), atol=1e-3)
    assert isinstance(model.get_submodule("linear"), QuantLinear)


def test_gptq_to_the_float_model_beats_the_weights_target_on_a_model(resnet20_weights):
    calib = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = {}
    for target in ("weights", "float"):
        model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
        teacher = copy.deepcopy(model)
        cfg = QuantConfig(
            wbits=4, abits=3, calib_batch_size=16, recon_iters=0, kd_iters=0, gptq_target=target
        )
        report = quantize_(model, cfg, calib, teacher=teacher, progress=False)
        losses[target] = report["stages"]["gptq"]["kd_loss"]
    assert losses["float"] < 0.9 * losses["weights"]


def test_active_gptq_on_a_model_counts_the_relu_layers_and_lowers_the_kd_loss(resnet20_weights):
    calib = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stages = {}
    for active in (False, True):
        model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
        cfg = QuantConfig(
            wbits=3, abits=8, calib_batch_size=16, reconstruct=False, kd_iters=0, gptq_active=active
        )
        stages[active] = quantize_(model, cfg, calib, progress=False)["stages"]["gptq"]
    assert stages[False]["active_layers"] == 0
    assert stages[True]["active_layers"] == 10  # the stem conv and each block's first conv
    assert stages[True]["kd_loss"] < 0.9 * stages[False]["kd_loss"]


def test_active_gptq_refuses_the_float_target():
    with pytest.raises(DfqError, match="gptq_active works with gptq_target 'weights' only"):
        QuantConfig(gptq_active=True, gptq_target="float")


def test_pipeline_reports_the_gptq_stage(resnet20_weights):
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    cfg = QuantConfig(
        weight_rounding="gptq", calib_batch_size=16, recon_iters=0, kd_iters=0, gptq_images=16
    )
    report = quantize_(model, cfg, torch.randn(16, 3, 32, 32), progress=False)
    stage = report["stages"]["gptq"]
    assert stage["kd_loss"] < report["stages"]["prepare"]["kd_loss"]
    assert "layer1.0" in stage["unit_losses"]
