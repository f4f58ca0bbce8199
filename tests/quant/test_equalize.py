import copy

import torch
from torch import nn

from dfq.models import load_model
from dfq.quant.distill import mean_kd_loss
from dfq.quant.equalize import (
    channel_clips,
    clipped_layers,
    equalize_clips,
    equalize_streams,
    find_clip_pairs,
    find_streams,
)
from dfq.quant.fold import fold_bn
from dfq.quant.insert import prepare
from dfq.quant.quant_config import QuantConfig


class Block(nn.Module):
    """Inverted residual: expand (ReLU6), project (linear), added to the input."""

    def __init__(self, c: int, skip: bool) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, 4 * c, 1)
        self.act = nn.ReLU6()
        self.project = nn.Conv2d(4 * c, c, 1)
        self.skip = skip

    def forward(self, x):
        y = self.project(self.act(self.expand(x)))
        return x + y if self.skip else y


class Tiny(nn.Module):
    def __init__(self, tail: str = "conv") -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.blocks = nn.Sequential(Block(8, False), Block(8, True), Block(8, True))
        self.head = nn.Conv2d(8, 16, 1) if tail == "conv" else nn.AvgPool2d(1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16 if tail == "conv" else 8, 10)

    def forward(self, x):
        x = self.blocks(self.act(self.stem(x)))
        return self.fc(self.pool(torch.relu(self.head(x))).flatten(1))


def _uneven(model: Tiny) -> Tiny:
    """Stream channels spanning a factor of 1,000 (as in trained mobile nets)."""
    torch.manual_seed(0)
    gain = torch.logspace(-2, 1, 8)
    with torch.no_grad():
        for b in model.blocks:
            b.project.weight.mul_(gain.view(-1, 1, 1, 1))
            b.project.bias.mul_(gain)
    return model.eval()


def test_the_stream_of_an_inverted_residual_net_is_found_with_its_layers():
    torch.manual_seed(0)
    streams = find_streams(Tiny().eval())
    assert len(streams) == 1
    s = streams[0]
    assert sorted(s.producers) == [f"blocks.{i}.project" for i in range(3)]
    assert sorted(s.readers) == ["blocks.1.expand", "blocks.2.expand", "head"]


def test_a_stream_read_by_anything_but_a_conv_or_linear_is_left_alone(resnet20_weights):
    torch.manual_seed(0)
    assert find_streams(Tiny(tail="pool").eval()) == []
    resnet, _ = load_model("cifar10_resnet20", weights=resnet20_weights)
    fold_bn(resnet.eval(), torch.randn(2, 3, 32, 32))
    assert find_streams(resnet) == []  # the post-add ReLU reads every stream


def test_equalizing_keeps_the_float_output_and_evens_out_the_channels():
    model = _uneven(Tiny())
    x = torch.randn(8, 3, 8, 8)
    ref = model(x)
    report = equalize_streams(model, [x])
    assert torch.allclose(model(x), ref, atol=1e-4, rtol=1e-4)
    (only,) = report
    before, after = only["range_spread"]
    assert before > 20 and after < before / 3


def test_equalized_streams_quantize_to_four_bits_with_less_error():
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = {}
    for eq in (False, True):
        model = _uneven(Tiny())
        teacher = copy.deepcopy(model)
        cfg = QuantConfig(wbits=8, abits=4, calib_batch_size=32, equalize_streams=eq)
        prep = prepare(model, cfg, [x])
        assert len(prep.equalized) == int(eq)
        losses[eq] = mean_kd_loss(model, teacher, x, cfg.kd_temperature)
    assert losses[True] < 0.5 * losses[False]


class Mobile(nn.Module):
    """Stem -> ReLU6 -> depthwise -> ReLU6 -> 1x1, whose stem channels span a factor of 100."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Sequential(nn.Identity(), nn.ReLU6())  # timm's folded BatchNormAct2d
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)
        with torch.no_grad():
            gain = torch.logspace(-2, 0, 8)
            self.stem.weight.mul_(gain.view(-1, 1, 1, 1))
            self.stem.bias.mul_(gain)

    def forward(self, x):
        y = self.pw(torch.nn.functional.relu6(self.dw(self.act(self.stem(x)))))
        return self.fc(y.mean((2, 3)))


def test_clipped_pairs_are_a_layer_an_activation_and_a_depthwise_conv():
    torch.manual_seed(0)
    (pair,) = find_clip_pairs(Mobile().eval())
    assert (pair.producer, pair.reader, pair.top) == ("stem", "dw", 6.0)
    assert find_clip_pairs(Tiny().eval()) == []  # ReLU6 read by 1x1 convs only


def test_clipped_layers_are_those_a_relu_or_relu6_alone_reads():
    # Mobile: stem -> (identity, ReLU6), dw -> F.relu6; pw is averaged, fc is the output
    assert clipped_layers(Mobile().eval()) == {"stem": 6.0, "dw": 6.0}
    # Tiny: the stem's and the expansions' ReLU6, the head's torch.relu; projections feed additions
    expands = {f"blocks.{i}.expand": 6.0 for i in range(3)}
    assert clipped_layers(Tiny().eval()) == {"stem": 6.0, **expands, "head": float("inf")}


def test_clip_equalizing_keeps_the_float_output_and_evens_out_the_channels():
    torch.manual_seed(0)
    model = Mobile().eval()
    x = torch.randn(8, 3, 8, 8)
    ref = model(x)
    (only,) = equalize_clips(model, [x])
    assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-4)
    before, after = only["range_spread"]
    assert before > 10 and after == 1.0
    with torch.no_grad():
        peaks = model.act(model.stem(x)).transpose(0, 1).flatten(1).amax(1)
    assert float(peaks.max()) <= 6.0


def test_clip_equalized_activations_quantize_to_four_bits_with_less_error():
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = {}
    for eq in ("none", "max", "mse"):
        torch.manual_seed(0)
        model = Mobile().eval()
        teacher = copy.deepcopy(model)
        cfg = QuantConfig(wbits=8, abits=4, calib_batch_size=32, equalize_clips=eq)
        prep = prepare(model, cfg, [x])
        assert len(prep.equalized_clips) == int(eq != "none")
        with torch.no_grad():  # the depthwise conv's output: it reads the equalized tensor
            ref = teacher.dw(teacher.act(teacher.stem(x)))
            out = model.dw(model.act(model.stem(x)))
            losses[eq] = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert losses["max"] < 0.5 * losses["none"]
    assert losses["mse"] < 0.5 * losses["none"]


def _grid_error(x: torch.Tensor, clip: float, bits: int = 4) -> float:
    step = clip / (2**bits - 1)
    return float((torch.clamp(torch.round(x / step), 0, 2**bits - 1) * step - x).pow(2).mean())


def test_a_long_tailed_channel_is_clipped_below_its_peak_and_an_even_one_at_it():
    even = torch.linspace(0, 1, 10_000)
    tailed = torch.empty(10_000).exponential_(generator=torch.Generator().manual_seed(0))
    clips = channel_clips(torch.stack([even, tailed]), bits=4)
    assert 0.95 <= float(clips[0]) <= 1.0
    peak = float(tailed.max())
    assert float(clips[1]) < 0.8 * peak
    assert _grid_error(tailed, float(clips[1])) < 0.6 * _grid_error(tailed, peak)
