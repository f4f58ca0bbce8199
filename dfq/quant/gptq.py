"""GPTQ weight rounding (Frantar et al., 2023; OBQ for convolutions): round the weights so that
each layer's output on the calibration inputs changes least, not each weight on its own.

A layer's output error for a weight change dW is `dW H dW^T` with `H = X X^T`, X its (quantized)
inputs as columns (im2col patches for a convolution, one matrix per group: a depthwise conv has
one small H per channel). Columns are rounded one at a time, largest H diagonal first, and each
rounding error is spread over the columns not yet rounded through the inverse of H (its upper
Cholesky factor). The bias is a last, unrounded column fed by a constant 1, so it absorbs what
rounding shifted on average (bias correction).

Run unit by unit in forward order on the quantized model, so each layer sees the inputs its
quantized predecessors produce; a unit keeps nearest rounding when GPTQ does not lower its output
error on the calibration images. The grid (step sizes) is the range initialization's; only the
integer codes change. Costs seconds on a CPU: one pass per layer over its unit.

`active` (AdaRound's objective through the activation): where a ReLU / ReLU6 alone reads a
layer's output, an output position counts only where the float output lies inside (0, top), the
range the activation passes on; each output channel then has its own H (its active positions).

Two targets. `weights`: the layer's output with float weights on the same quantized inputs (only
the rounding error is corrected). `float` (asymmetric calibration, as GPTAQ): the FP model's
output on its own float inputs, so each layer also absorbs what quantizing its inputs changed.
That objective, `|W X_fp - V X_q|^2`, splits into the least-squares fit
`W' = W X_fp X_q^T (X_q X_q^T)^-1` (damped towards W) plus `|(W' - V) X_q|^2`: GPTQ of W' against
the same H.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfq.models.blocks import units
from dfq.progress import StepBar
from dfq.quant.equalize import clipped_layers
from dfq.quant.layers import QuantConv2d
from dfq.quant.quantizer import disabled
from dfq.quant.reconstruct import StopForward, capture, run_hooked, unit_layers, unit_loss

MAX_DAMP_TRIES = 4
MASK_CHUNK = 2**25  # values in a masked copy of the input columns


def layer_columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The inputs `layer` multiplies with its weights, (groups, d, n): d = weights per output
    channel, n = images x output positions; after its input quantizer and padding."""
    x = layer.quant_input(x).float()
    if not isinstance(layer, QuantConv2d):
        return x.reshape(-1, x.shape[-1]).T.unsqueeze(0)
    if isinstance(layer.padding, str):
        raise ValueError(f"padding '{layer.padding}' is not supported by GPTQ")
    if layer.same_pad is not None:
        x = F.pad(x, layer.same_pad)
    cols = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    b, d, n = cols.shape
    g = layer.groups
    return cols.view(b, g, d // g, n).permute(1, 2, 0, 3).reshape(g, d // g, b * n)


class Hessian:
    """`X X^T / n` of a layer's input columns, with a constant-1 row last when it has a bias; with
    the float model's columns of the same images also `X_fp X^T / n` (the cross term)."""

    def __init__(self, with_bias: bool) -> None:
        self.with_bias = with_bias
        self.h: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.n = 0

    def _ones(self, cols: torch.Tensor) -> torch.Tensor:
        if not self.with_bias:
            return cols
        return torch.cat([cols, cols.new_ones(cols.shape[0], 1, cols.shape[2])], dim=1)

    @torch.no_grad()
    def add(
        self,
        cols: torch.Tensor,
        fp_cols: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Accumulate columns (groups, d, n); with `mask` (groups, out, n) one H per output channel
        over its positions where the mask is 1: then H is (groups, out, d', d')."""
        cols = self._ones(cols)
        if mask is None:
            h = torch.einsum("gdn,gen->gde", cols, cols).double()
        else:
            h = _masked_gram(cols, mask)
        self.h = h if self.h is None else self.h + h
        if fp_cols is not None:
            c = torch.einsum("gdn,gen->gde", self._ones(fp_cols), cols).double()
            self.cross = c if self.cross is None else self.cross + c
        self.n += cols.shape[2]

    def value(self) -> torch.Tensor:
        return self.h / max(1, self.n)

    def cross_value(self) -> torch.Tensor | None:
        return None if self.cross is None else self.cross / max(1, self.n)


def _masked_gram(cols: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`sum_n mask[g, o, n] x_n x_n^T` for each group and output channel: (groups, out, d, d), in
    chunks of output channels that keep the masked copy of the columns near MASK_CHUNK values."""
    g, d, n = cols.shape
    out = mask.shape[1]
    k = max(1, MASK_CHUNK // (g * d * n))
    parts = []
    for j in range(0, out, k):
        m = mask[:, j : j + k, None, :].to(cols.dtype)  # (g, k, 1, n)
        parts.append(((cols[:, None] * m) @ cols[:, None].transpose(2, 3)).double())
    return torch.cat(parts, dim=1)


def active_mask(layer: nn.Module, cols: torch.Tensor, top: float) -> torch.Tensor:
    """(groups, out, n): 1 where `layer`'s output with its float weights on `cols` (its input
    columns, see `layer_columns`) lies strictly inside (0, `top`)."""
    g, _, n = cols.shape
    w = layer.weight.detach().reshape(g, layer.weight.shape[0] // g, -1).float()
    y = w @ cols
    if layer.bias is not None:
        y = y + layer.bias.detach().reshape(g, -1, 1).float()
    return (y > 0) & (y < top)


def least_squares_target(
    w: torch.Tensor, h: torch.Tensor, cross: torch.Tensor, damp: float
) -> torch.Tensor:
    """The weights (groups, out, d) that best map the quantized inputs onto the float output
    `w X_fp`: `(w C + l w) (H + l I)^-1`, C = X_fp X_q^T / n, l = `damp` x mean diag H (the damping
    pulls towards `w` where the inputs say little)."""
    h, cross, w64 = h.double(), cross.double(), w.double()
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    lam = damp * h.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)[:, None, None]
    rhs = w64 @ cross + lam * w64
    return torch.linalg.solve(h + lam * eye, rhs.transpose(1, 2)).transpose(1, 2).to(w.dtype)


def _upper_inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of `(H + damp * mean diag * I)^-1`, damping raised until it is
    positive definite."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    mean_diag = h.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)[:, None, None]
    for _ in range(MAX_DAMP_TRIES):
        chol, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if not bool(info.any()):
            inv = torch.cholesky_solve(eye.expand_as(h), chol)
            upper, info = torch.linalg.cholesky_ex(inv, upper=True)
            if not bool(info.any()):
                return upper
        damp *= 10
    raise ValueError("GPTQ: the input Hessian is not positive definite even with damping")


@torch.no_grad()
def gptq_round(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    qmin: int,
    qmax: int,
    bias: torch.Tensor | None = None,
    damp: float = 0.01,
    soft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Round `w` (groups, out, d) onto the grid `scale` (groups, out, 1) x [qmin, qmax] against
    `h` (groups, d', d'), d' = d + 1 with a `bias` (groups, out). Returns the rounded weights and
    the compensated bias; with `soft`, each weight as it was just before GPTQ rounded it (after
    the earlier columns' errors were pushed onto it): nearest rounding of those gives the same
    codes, and their fractions say how close each call was (where AdaRound can start)."""
    g, o, d = w.shape
    cols = torch.cat([w, bias[..., None]], dim=2) if bias is not None else w
    cols = cols.double()
    h = h.double().clone()
    diag = h.diagonal(dim1=1, dim2=2)
    dead = diag <= 0  # inputs that are always 0: their weights never act
    diag.masked_fill_(dead, 1.0)
    order = torch.argsort(diag[:, :d], dim=1, descending=True)
    if bias is not None:
        order = torch.cat([order, order.new_full((g, 1), d)], dim=1)
    dd = order.shape[1]
    cols = cols.gather(2, order[:, None, :].expand(g, o, dd))
    h = h.gather(1, order[:, :, None].expand(g, dd, dd))
    h = h.gather(2, order[:, None, :].expand(g, dd, dd))
    upper = _upper_inverse_factor(h, damp)
    s = scale.double().expand(g, o, 1)[..., 0]
    before = cols.clone() if soft else None
    for i in range(d):
        col = cols[:, :, i]
        if before is not None:
            before[:, :, i] = col
        q = torch.clamp(torch.round(col / s), qmin, qmax) * s
        err = (col - q) / upper[:, i, i][:, None]
        cols[:, :, i] = q
        cols[:, :, i + 1 :] -= err[:, :, None] * upper[:, None, i, i + 1 :]
    if before is not None:
        before[:, :, d:] = cols[:, :, d:]  # the bias column: compensated, never rounded
        cols = before
    out = torch.empty_like(cols).scatter_(2, order[:, None, :].expand(g, o, dd), cols)
    new_bias = out[:, :, d].to(bias.dtype) if bias is not None else None
    return out[:, :, :d].to(w.dtype), new_bias


@torch.no_grad()
def gptq_layer(
    layer: nn.Module,
    h: torch.Tensor,
    damp: float,
    cross: torch.Tensor | None = None,
    fit_damp: float = 0.01,
    soft: bool = False,
) -> None:
    """Round `layer`'s float weight in place (it stays float, now on its grid) and correct its
    bias; with `cross` (X_fp X_q^T) towards the float model's output instead of the layer's own
    (the least-squares fit damped by `fit_damp`); with `soft` the weight keeps GPTQ's values
    before rounding (same codes, see `gptq_round`)."""
    w = layer.weight
    g = layer.groups if isinstance(layer, QuantConv2d) else 1
    out = w.shape[0] // g
    q = layer.weight_quantizer
    scale = q.step(w).detach().reshape(g, out, 1)
    wg = w.detach().reshape(g, out, -1)
    bias = layer.bias.detach().reshape(g, out) if layer.bias is not None else None
    if cross is not None:
        full = torch.cat([wg, bias[..., None]], dim=2) if bias is not None else wg
        full = least_squares_target(full, h, cross, fit_damp)
        wg, bias = (full[..., :-1], full[..., -1]) if bias is not None else (full, None)
    if h.dim() == 4:  # one H per output channel (`active`): each channel its own group
        wg, scale, h = wg.reshape(g * out, 1, -1), scale.reshape(g * out, 1, 1), h.flatten(0, 1)
        bias = None if bias is None else bias.reshape(g * out, 1)
    new_w, new_b = gptq_round(wg, h, scale, q.qmin, q.qmax, bias, damp, soft)
    w.copy_(new_w.reshape_as(w))
    if new_b is not None:
        layer.bias.copy_(new_b.reshape(-1))


@torch.no_grad()
def layer_hessian(
    block: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    batch_size: int,
    fp: tuple[nn.Module, nn.Module, torch.Tensor] | None = None,
    top: float | None = None,
) -> Hessian | None:
    """H of `layer`'s inputs while `block` runs on `x` (stopped at the layer); with `fp` = (float
    block, its layer, its inputs) also the cross term with the float model's columns; with `top`
    one H per output channel over the positions where its output is inside (0, top)."""
    acc = Hessian(layer.bias is not None)
    for i in range(0, len(x), batch_size):
        cols = _columns(block, layer, x[i : i + batch_size])
        fp_cols = None if fp is None else _columns(fp[0], fp[1], fp[2][i : i + batch_size])
        if cols is not None and (fp is None or fp_cols is not None):
            mask = None if top is None else active_mask(layer, cols, top)
            acc.add(cols, fp_cols, mask)
    return acc if acc.n else None


def _columns(block: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """`layer`'s input columns while `block` runs on the batch `x`."""
    store: list[torch.Tensor] = []

    def hook(_m, inp):
        store.append(layer_columns(layer, inp[0]))
        raise StopForward

    run_hooked(block, layer.register_forward_pre_hook(hook), x, len(x))
    return store[0] if store else None


@torch.no_grad()
def gptq(
    qmodel: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    damp: float = 0.01,
    max_images: int = 64,
    progress: bool = True,
    fpmodel: nn.Module | None = None,
    fit_damp: float = 0.01,
    soft: bool = False,
    active: bool = False,
) -> dict:
    """GPTQ every unit of `qmodel` in forward order on (up to `max_images` of) `images`; returns
    each unit's output error with nearest rounding and after, and the units that kept nearest.

    With `fpmodel` (the same structure, every quantizer off, weights unrounded) the target is its
    output on its own inputs (asymmetric calibration, the fit damped by `fit_damp`); without,
    each unit's output with float weights on the quantized inputs. `soft`: see `gptq_layer`.
    `active` (target `weights` only): layers read by a ReLU / ReLU6 alone count only the output
    positions it passes (module docstring)."""
    qmodel.eval()
    images, bs = images[:max_images], batch_size
    names = units(qmodel)
    tops = {}
    if active and fpmodel is None:
        tops = {qmodel.get_submodule(n): top for n, top in clipped_layers(qmodel).items()}
    losses, kept_nearest, skipped = {}, [], []
    with StepBar(len(names), "gptq", enabled=progress) as bar:
        for name in names:
            bar.step(1, name)
            block = qmodel.get_submodule(name)
            x = capture(qmodel, name, images, bs)
            every = unit_layers(block)
            layers = [m for m in every if m.weight_quantizer.enabled]
            ref = None if fpmodel is None or x is None else _Reference(fpmodel, name, images, bs)
            if x is None or not layers or (ref is not None and ref.x.shape != x.shape):
                skipped.append(name)
                continue
            y = _float_output(block, x, bs) if ref is None else ref.output(bs)
            before = unit_loss(block, x, y, bs, amp=False)
            saved = [(m.weight.clone(), None if m.bias is None else m.bias.clone()) for m in layers]
            try:
                for layer in layers:
                    fp = None if ref is None else (ref.block, ref.layers[every.index(layer)], ref.x)
                    acc = layer_hessian(block, layer, x, bs, fp, tops.get(layer))
                    if acc is not None:
                        gptq_layer(layer, acc.value(), damp, acc.cross_value(), fit_damp, soft)
            except ValueError:
                skipped.append(name)
            after = unit_loss(block, x, y, bs, amp=False)
            if after > before:
                for m, (w, b) in zip(layers, saved, strict=True):
                    m.weight.copy_(w)
                    if b is not None:
                        m.bias.copy_(b)
                kept_nearest.append(name)
                after = before
            losses[name] = [before, after]
    return {
        "unit_losses": losses,
        "kept_nearest": kept_nearest,
        "skipped": skipped,
        "active_layers": len(tops),
    }


class _Reference:
    """A unit of the FP model (every quantizer off): its input on the images, and its layers in
    the order of `unit_layers`."""

    def __init__(self, fpmodel: nn.Module, name: str, images: torch.Tensor, bs: int) -> None:
        self.block = fpmodel.get_submodule(name)
        self.layers = unit_layers(self.block)
        x = capture(fpmodel, name, images, bs)
        self.x = x if x is not None else torch.empty(0)

    @torch.no_grad()
    def output(self, bs: int) -> torch.Tensor:
        return torch.cat([self.block(b) for b in self.x.split(bs)])


@torch.no_grad()
def _float_output(block: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`block`'s output on `x` with its weights unrounded (input quantizers stay on): what GPTQ
    tries to keep."""
    with disabled(m.weight_quantizer for m in unit_layers(block)):
        return torch.cat([block(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
