"""Issue 14: the quantization points of the three protocols, checked on ResNet-20."""

from __future__ import annotations

import torch

from dfq.models import load_model
from dfq.quant.attached import attached_quantizers
from dfq.quant.insert import prepare
from dfq.quant.layers import quant_layers
from dfq.quant.quant_config import QuantConfig


def _prepared(**cfg):
    torch.manual_seed(0)
    model, _ = load_model("cifar10_resnet20", pretrained=False)
    result = prepare(model, QuantConfig(**cfg), [torch.randn(16, 3, 32, 32)])
    return model, result


def test_deploy_quantizes_every_layer_input_and_the_residual_stream():
    model, result = _prepared(wbits=4, abits=4)
    layers = quant_layers(model)
    assert layers["conv1"].input_quantizer.bits == 8  # the image
    assert result.bits["conv1"] == (8, 8) and result.bits["linear"] == (8, 8)
    blocks = attached_quantizers(model, "input")
    assert len(blocks) == 9 and all(q.bits == 4 for q in blocks.values())
    assert all(layers[f"{b}.conv1"].input_quantizer is None for b in blocks)
    assert all(layers[f"{b}.conv2"].input_quantizer.bits == 4 for b in blocks)
    assert attached_quantizers(model, "output") == {}


def test_gdfq_quantizes_after_every_relu_and_leaves_the_image_float():
    model, result = _prepared(protocol="gdfq", wbits=4, abits=4)
    layers = quant_layers(model)
    assert all(layer.input_quantizer is None for layer in layers.values())
    assert all(layer.weight_quantizer.bits == 4 for layer in layers.values())  # first/last too
    acts = attached_quantizers(model, "output")
    relus = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert sorted(acts) == sorted(relus) and len(acts) == 19  # stem + 2 per block
    assert all(q.bits == 4 and not q.signed for q in acts.values())
    assert "layer3.2.relu2" in acts  # the last residual stream, before the pooling
    assert attached_quantizers(model, "input") == {}
    with_8 = _prepared(protocol="gdfq", wbits=4, abits=4, first_last_bits=8)[0]
    assert quant_layers(with_8)["conv1"].weight_quantizer.bits == 8


def test_genie_keeps_the_image_float_and_the_second_input_at_8_bits():
    model, result = _prepared(protocol="genie", wbits=4, abits=4)
    layers = quant_layers(model)
    assert result.bits["conv1"] == (8, None) and layers["conv1"].input_quantizer is None
    assert result.bits["layer1.0.conv1"] == (4, 8)
    assert attached_quantizers(model, "input")["layer1.0"].bits == 8  # its block's entry
    assert result.bits["linear"] == (8, 8)
    assert result.bits["layer2.0.conv2"] == (4, 4)


def test_protocol_outputs_differ_and_stay_finite():
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for protocol in ("deploy", "gdfq", "genie"):
        model, _ = _prepared(protocol=protocol)
        with torch.no_grad():
            outs.append(model(x))
    assert all(torch.isfinite(o).all() for o in outs)
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
