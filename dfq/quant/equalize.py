"""Residual-stream equalization: even out the channel ranges of linear residual streams before
quantizing them per tensor.

In an inverted-residual net (MobileNetV2, EfficientNet) the residual stream is the sum of linear
projection convs, with no activation: `T = P_0(.) + P_1(.) + ...`, read by 1x1 convs. Its channels
span very different ranges, so one 4-bit grid per tensor zeroes the small ones (the block inputs of
EfficientNet-Lite0 cost most of its W4A4 error: tools/bench_sensitivity.py). Dividing channel c of
the stream by `s_c` (rows c of every producer's weight and bias) and multiplying it back in the
readers' weights (input column c) leaves the float model unchanged. Per-output-channel weight grids
absorb the producers' change exactly; the readers' columns grow where `s_c` > 1, so `s_c` balances
the two as SmoothQuant does: `s_c = sqrt(range of x_c / max |W[:, c]|)`.

Streams are found on a torch.fx trace of the folded model: tensors joined by additions (and
identities), produced by convs / linears, read only by convs / linears. A model that does not trace,
or a stream with any other reader (an activation, a pool, the output), is left as it is.

Clipped-activation equalization (`equalize_clips`) is the same idea where an activation sits
between the two layers: conv -> ReLU / ReLU6 -> depthwise conv, the stem and every expansion of an
inverted-residual net. Channel c of the activation is scaled up by `s_c >= 1` until its largest
value on the calibration images reaches the largest channel's (never past a ReLU6's 6, so
`relu6(s x) = s relu6(x)` wherever the images reach); the depthwise filter c is divided by `s_c`.
Both layers' weight grids are per output channel, so they absorb the change exactly: only the
per-tensor activation grid changes, and its small channels get more of its 16 levels. The "mse"
variant brings each channel's own least-squares clipping point to the top instead, so the ReLU6
clips every channel where its own grid should end (the float model changes there, as quantizing
would have clipped it anyway).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dfq.quant.ranges import best_clip_fractions, forward_all

ADDS = (operator.add, operator.iadd, torch.add)
MAX_SCALE = 100.0
SAMPLE = 1024  # values per channel and batch kept for the per-channel clipping search


@dataclass
class Stream:
    producers: list[str] = field(default_factory=list)  # convs / linears whose outputs sum to it
    readers: list[str] = field(default_factory=list)  # convs / linears that read it


def _layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _layer(m) or super().is_leaf_module(m, qualname)


def _joins(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node] | None:
    """The stream tensors `node` passes on unchanged in scale: an addition's two inputs, an
    identity's input; None for any other node."""
    if node.op == "call_function" and node.target in ADDS and not node.kwargs:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        return args if len(args) == 2 == len(node.args) else None
    if node.op == "call_module" and isinstance(modules[node.target], (nn.Identity, nn.Dropout)):
        return [node.args[0]] if node.args and isinstance(node.args[0], fx.Node) else None
    return None


def _traced(model: nn.Module) -> tuple[fx.Graph, dict[str, nn.Module], dict[str, int]] | None:
    """The torch.fx graph of `model` (convs and linears as leaves), its modules and how often
    each module is called; None when the model does not trace."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any trace failure means: leave the model as it is
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return graph, dict(model.named_modules()), calls


def find_streams(model: nn.Module) -> list[Stream]:
    """Every linear residual stream of `model` (eval mode) that can be equalized; [] when the
    model does not trace with torch.fx."""
    traced = _traced(model)
    if traced is None:
        return []
    graph, modules, calls = traced
    parent: dict[fx.Node, fx.Node] = {}

    def root(n: fx.Node) -> fx.Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    for node in graph.nodes:
        joined = _joins(node, modules)
        for src in joined or []:
            parent[root(src)] = root(node)
    members: dict[fx.Node, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op != "output":
            members.setdefault(root(node), []).append(node)
    streams = []
    for nodes in members.values():
        stream = _stream(nodes, modules, calls)
        if stream is not None:
            streams.append(stream)
    return streams


def _stream(
    nodes: list[fx.Node], modules: dict[str, nn.Module], calls: dict[str, int]
) -> Stream | None:
    """The stream made of `nodes` (one union of additions and identities), if equalizable."""
    inside = set(nodes)
    stream = Stream()
    for node in nodes:
        if _joins(node, modules) is not None:
            continue
        if not (node.op == "call_module" and _layer(modules[node.target])):
            return None  # a tensor from anything but a conv / linear (an activation, the input)
        stream.producers.append(node.target)
    for node in nodes:
        for user in node.users:
            if user in inside:
                continue
            ok = (
                user.op == "call_module"
                and _layer(modules[user.target])
                and user.args[0] is node
                and _readable(modules[user.target])
            )
            if not ok:
                return None
            stream.readers.append(user.target)
    if not stream.producers or not stream.readers:
        return None
    names = stream.producers + stream.readers
    if any(calls[n] != 1 for n in names) or len(set(names)) != len(names):
        return None  # a layer called twice, or reading the stream it writes
    return stream


def _readable(m: nn.Module) -> bool:
    """A reader whose input channel c meets weights of its own: a full conv / linear, or a
    depthwise conv."""
    if isinstance(m, nn.Linear):
        return True
    return m.groups == 1 or (m.groups == m.in_channels == m.out_channels)


def _column_max(m: nn.Module) -> torch.Tensor:
    """max |W| over the weights that read each input channel."""
    w = m.weight.detach().abs()
    if isinstance(m, nn.Conv2d) and m.groups > 1:  # depthwise: channel c has its own filter
        return w.flatten(1).amax(1)
    return w.transpose(0, 1).flatten(1).amax(1)


@torch.no_grad()
def equalize_streams(model: nn.Module, batches: list[torch.Tensor]) -> list[dict]:
    """Equalize every linear residual stream of `model` in place (its float function unchanged);
    channel ranges measured on `batches`. Returns per stream its layers and the spread of its
    channel ranges (max / median) before and after."""
    streams = find_streams(model)
    if not streams:
        return []
    ranges: dict[str, torch.Tensor] = {}
    handles = []
    for stream in streams:
        for name in stream.readers:

            def hook(_m, inp, name=name):
                x = inp[0].detach().abs().transpose(0, 1).flatten(1).amax(1).float()
                ranges[name] = x if name not in ranges else torch.maximum(ranges[name], x)

            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    forward_all(model, batches, handles)
    report = []
    for stream in streams:
        readers = [model.get_submodule(n) for n in stream.readers]
        r = torch.stack([ranges[n] for n in stream.readers]).amax(0)
        w = torch.stack([_column_max(m).float() for m in readers]).amax(0)
        live = (r > 0) & (w > 0)
        s = torch.where(live, (r / w.clamp_min(1e-12)).sqrt(), torch.ones_like(r))
        s = s / s[live].median() if live.any() else s  # keep the stream's overall scale
        s = s.clamp(1 / MAX_SCALE, MAX_SCALE)
        for name in stream.producers:
            _scale_outputs(model.get_submodule(name), 1 / s)
        for m in readers:
            _scale_inputs(m, s)
        after = r / s
        report.append(
            {
                "producers": stream.producers,
                "readers": stream.readers,
                "range_spread": [_spread(r[live]), _spread(after[live])],
            }
        )
    return report


def _spread(r: torch.Tensor) -> float:
    return round(float(r.max() / r.median().clamp_min(1e-12)), 3) if r.numel() else 1.0


def _scale_outputs(m: nn.Module, f: torch.Tensor) -> None:
    shape = (-1,) + (1,) * (m.weight.dim() - 1)
    m.weight.mul_(f.to(m.weight.dtype).view(shape))
    if m.bias is not None:
        m.bias.mul_(f.to(m.bias.dtype))


def _scale_inputs(m: nn.Module, f: torch.Tensor) -> None:
    f = f.to(m.weight.dtype)
    if isinstance(m, nn.Conv2d) and m.groups > 1:
        m.weight.mul_(f.view(-1, 1, 1, 1))
    elif isinstance(m, nn.Conv2d):
        m.weight.mul_(f.view(1, -1, 1, 1))
    else:
        m.weight.mul_(f.view(1, -1))


@dataclass
class ClipPair:
    producer: str  # conv / linear whose output feeds the activation
    reader: str  # depthwise conv reading the activation's output
    top: float  # the activation's upper bound (inf for a ReLU)


def _clip_top(node: fx.Node, modules: dict[str, nn.Module]) -> float | None:
    """The upper bound of a ReLU-like node that starts at 0 (ReLU: inf, ReLU6: 6); None for any
    other node."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ReLU):
            return math.inf
        if isinstance(m, nn.Hardtanh) and m.min_val == 0:  # nn.ReLU6 included
            return float(m.max_val)
    if node.op == "call_function" and len(node.args) == 1:
        if node.target in (F.relu, torch.relu):
            return math.inf
        if node.target is F.relu6:
            return 6.0
    return None


def _only_user(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The single node that reads `node`, looking past identities; None when there are several."""
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        node = users[0]
        joined = _joins(node, modules)
        if joined is None:
            return node
        if len(joined) != 1:
            return None  # an addition: the tensor is not read by one layer alone


def _clipped(
    graph: fx.Graph, modules: dict[str, nn.Module]
) -> Iterator[tuple[fx.Node, fx.Node, float]]:
    """(layer node, activation node, its top) for every conv / linear whose output only a ReLU /
    ReLU6 reads."""
    for node in graph.nodes:
        if not (node.op == "call_module" and _layer(modules[node.target])):
            continue
        act = _only_user(node, modules)
        top = _clip_top(act, modules) if act is not None else None
        if top is not None:
            yield node, act, top


def clipped_layers(model: nn.Module) -> dict[str, float]:
    """Layer name -> the top of the ReLU (inf) / ReLU6 (6) that alone reads its output, for every
    such conv / linear called once in `model` (eval mode); {} when it does not trace with
    torch.fx. Outside (0, top) the layer's output does not reach the rest of the network."""
    traced = _traced(model)
    if traced is None:
        return {}
    graph, modules, calls = traced
    return {n.target: top for n, _, top in _clipped(graph, modules) if calls[n.target] == 1}


def find_clip_pairs(model: nn.Module) -> list[ClipPair]:
    """Every conv / linear -> ReLU or ReLU6 -> depthwise conv chain of `model` (eval mode) in which
    each tensor has one reader; [] when the model does not trace with torch.fx."""
    traced = _traced(model)
    if traced is None:
        return []
    graph, modules, calls = traced
    pairs = []
    for node, act, top in _clipped(graph, modules):
        reader = _only_user(act, modules)
        if reader is None or reader.op != "call_module":
            continue
        m = modules[reader.target]
        depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1
        if depthwise and calls[node.target] == calls[reader.target] == 1:
            pairs.append(ClipPair(node.target, reader.target, top))
    return pairs


@torch.no_grad()
def equalize_clips(
    model: nn.Module, batches: list[torch.Tensor], clip: str = "max", bits: int = 4
) -> list[dict]:
    """Scale up the small channels of every clipped activation read by a depthwise conv (module
    docstring), measured on `batches`. `clip` "max": each channel's largest value is brought to the
    largest channel's, so the float model is unchanged on `batches`; "mse": each channel's own
    `bits`-bit clipping point (least squared error) is brought to the activation's top, so a ReLU6
    clips each channel there: per-channel activation ranges, carried by the weights (what the
    pipeline then takes as the FP model to reconstruct towards). Returns per pair its layers and
    the spread of the channel ranges before and after."""
    pairs = find_clip_pairs(model)
    samples: dict[str, list[torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    handles = []
    for pair in pairs:

        def hook(_m, inp, name=pair.reader):
            x = inp[0].detach().transpose(0, 1).flatten(1).float()
            keep = x.amax(1, keepdim=True)  # the peaks always, a subsample for the MSE
            if clip == "mse":
                idx = torch.randint(0, x.shape[1], (SAMPLE,), generator=gen).to(x.device)
                keep = torch.cat([keep, x[:, idx]], 1)
            samples.setdefault(name, []).append(keep.cpu())

        handles.append(model.get_submodule(pair.reader).register_forward_pre_hook(hook))
    forward_all(model, batches, handles)
    report = []
    for pair in pairs:
        x = torch.cat(samples[pair.reader], 1)
        ranges = x.amax(1) if clip == "max" else channel_clips(x, bits)
        live = ranges > 0
        if not live.any():
            continue
        top = pair.top if clip == "mse" and math.isfinite(pair.top) else math.inf
        target = min(float(ranges.max()), top)
        s = torch.where(live, target / ranges.clamp_min(1e-12), torch.ones_like(ranges))
        s = s.clamp(1.0, MAX_SCALE)
        _scale_outputs(model.get_submodule(pair.producer), s)
        _scale_inputs(model.get_submodule(pair.reader), 1 / s)
        report.append(
            {
                "producer": pair.producer,
                "reader": pair.reader,
                "range_spread": [_spread(ranges[live]), _spread((ranges * s)[live])],
            }
        )
    return report


def channel_clips(x: torch.Tensor, bits: int, steps: int = 100) -> torch.Tensor:
    """Per row of `x` (channels, values >= 0 after a ReLU), the clipping point whose unsigned
    `bits`-bit grid reproduces the row with the least squared error."""
    amax = x.amax(1).clamp_min(1e-12)
    fracs = torch.linspace(1.0, 0.05, steps)
    return amax * best_clip_fractions(x, amax, 0, 2**bits - 1, fracs)
