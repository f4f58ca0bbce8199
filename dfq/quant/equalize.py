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
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from dfq.quant.ranges import forward_all

ADDS = (operator.add, operator.iadd, torch.add)
MAX_SCALE = 100.0


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


def find_streams(model: nn.Module) -> list[Stream]:
    """Every linear residual stream of `model` (eval mode) that can be equalized; [] when the
    model does not trace with torch.fx."""
    try:
        graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any trace failure means: leave the model as it is
        return []
    modules = dict(model.named_modules())
    parent: dict[fx.Node, fx.Node] = {}

    def root(n: fx.Node) -> fx.Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
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
