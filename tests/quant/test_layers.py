import copy

import torch
from torch import nn

from dfq.models import load_model
from dfq.quant.attached import attached_quantizers
from dfq.quant.insert import prepare
from dfq.quant.layers import QuantConv2d, QuantLinear, quant_layers
from dfq.quant.quant_config import QuantConfig


def test_from_float_keeps_state_dict_keys_and_outputs_when_disabled():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    q = QuantConv2d.from_float(conv, wbits=4, abits=4, input_signed=True)
    assert {"weight", "bias"} <= set(q.state_dict())
    q.weight_quantizer.enabled = q.input_quantizer.enabled = False
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(q(x), conv(x))


def test_forward_is_conv_of_quantized_input_and_weight_plus_output_quantizer():
    lin = nn.Linear(6, 4)
    q = QuantLinear.from_float(lin, wbits=4, abits=8, input_signed=False)
    q.weight_quantizer.set_scale(q.weight.abs().amax(1) / 7)
    q.input_quantizer.set_scale(0.05)
    x = torch.rand(3, 6)
    want = nn.functional.linear(q.input_quantizer(x), q.weight_quantizer(q.weight), q.bias)
    assert torch.equal(q(x), want)
    from dfq.quant.quantizer import Quantizer

    q.output_quantizer = Quantizer(8, True)
    q.output_quantizer.set_scale(0.5)
    assert torch.equal(q(x), q.output_quantizer(want))


def test_bake_makes_weight_exactly_on_grid():
    q = QuantConv2d.from_float(nn.Conv2d(4, 5, 3), 4, 4)
    q.weight_quantizer.set_scale(torch.rand(5) * 0.05 + 0.01)
    q.bake()
    s = q.weight_quantizer.scale.detach().view(-1, 1, 1, 1)
    assert torch.equal(q.weight, torch.clamp(torch.round(q.weight / s), -8, 7) * s)
    assert torch.equal(q.weight_quantizer(q.weight), q.weight)


def test_w8a8_tiny_model_agrees_with_fp(resnet20_weights):
    model, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    fp = copy.deepcopy(model)
    torch.manual_seed(0)
    calib = torch.randn(64, 3, 32, 32)
    result = prepare(model, QuantConfig(wbits=8, abits=8), [calib])
    assert result.unquantized == []
    layers = quant_layers(model)
    assert len(layers) == 20
    assert not attached_quantizers(model, "input")["layer1.0"].signed  # after ReLU
    assert layers["layer1.0.conv1"].input_quantizer is None  # it reads the block's quantizer
    assert layers["conv1"].input_quantizer.signed  # normalized image
    x = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        agree = (fp(x).argmax(1) == model(x).argmax(1)).float().mean()
    assert agree > 0.9


def test_first_and_last_layers_take_first_last_bits():
    model, _ = load_model("cifar10_resnet20", pretrained=False)
    result = prepare(model, QuantConfig(wbits=4, abits=4), [torch.randn(8, 3, 32, 32)])
    assert result.bits["conv1"] == (8, 8) and result.bits["linear"] == (8, 8)
    assert result.bits["layer2.0.conv1"] == (4, 4)
    layers = quant_layers(model)
    assert (
        layers["linear"].weight_quantizer.bits == 8
        and layers["layer1.0.conv1"].weight_quantizer.bits == 4
    )
    model, _ = load_model("cifar10_resnet20", pretrained=False)
    result = prepare(
        model, QuantConfig(wbits=3, abits=3, first_last_bits="same"), [torch.randn(8, 3, 32, 32)]
    )
    # all layers 3 bit, but the image entering the first conv stays 8 bit
    assert result.bits["conv1"] == (3, 8) and result.bits["linear"] == (3, 3)
    assert quant_layers(model)["conv1"].input_quantizer.bits == 8


def test_unquantizable_layers_are_listed():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.LayerNorm([4, 6, 6]), nn.Flatten(), nn.Linear(144, 2)
    )
    result = prepare(model, QuantConfig(), [torch.randn(4, 3, 8, 8)])
    assert any(u.startswith("1 (LayerNorm)") for u in result.unquantized)


def test_save_and_reload_gives_the_same_outputs(tmp_path):
    from dfq.quant.quantizer import Quantizer
    from dfq.quant.saved import load_quantized, save_quantized

    model, dcfg = load_model("cifar10_resnet20", pretrained=False)
    cfg = QuantConfig(wbits=4, abits=4)
    prepare(model, cfg, [torch.randn(16, 3, 32, 32)])
    quant_layers(model)["layer1.0.conv1"].output_quantizer = Quantizer(8, True)
    save_quantized(model, tmp_path / "quantized.pt", "cifar10_resnet20", dcfg, cfg)
    back, dcfg2 = load_quantized(tmp_path)
    assert dcfg2 == dcfg
    assert quant_layers(back)["layer1.0.conv1"].output_quantizer is not None
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_quantizers_are_made_on_the_device_of_the_layer():
    # On a GPU run the quantizers were made on the CPU beside CUDA weights (the first CUDA run
    # failed there); the meta device stands in for a second device on a machine without one.
    conv = nn.Conv2d(3, 8, 3, device="meta")
    lin = nn.Linear(6, 4, device="meta")
    for q in (
        QuantConv2d.from_float(conv, wbits=4, abits=4, input_signed=True),
        QuantLinear.from_float(lin, wbits=4, abits=8, input_signed=False),
    ):
        for quantizer in (q.weight_quantizer, q.input_quantizer):
            assert quantizer.scale.device.type == "meta"
