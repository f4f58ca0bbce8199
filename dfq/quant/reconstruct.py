"""Block reconstruction (BRECQ / QDrop): make each quantized block reproduce its FP block's output.

Block by block, in forward order: weights get AdaRound soft bits (learned up-or-down rounding with
an annealed regularizer that pushes each toward 0 or 1), activation step sizes are learned, and
QDrop randomly leaves half of the activations unquantized (and mixes FP and quantized block inputs),
which flattens the loss landscape the quantized model ends up in. Weights are baked at the end of a
block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dfq.models.blocks import units
from dfq.modes import autocast, memory_format, trainable
from dfq.progress import StepBar
from dfq.quant.layers import QuantLayer, quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import Quantizer, activation_quantizers, temporarily

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (AdaRound)


class AdaRound(nn.Module):
    """Weight `clamp(floor(w / s) + h(alpha), qmin, qmax) * s`, h soft in [0, 1] or hard (alpha >=
    0)."""

    def __init__(self, q: Quantizer, w: torch.Tensor) -> None:
        super().__init__()
        self.qmin, self.qmax = q.qmin, q.qmax
        self.register_buffer("s", q.step(w).detach().clone())
        scaled = w.detach() / self.s
        self.register_buffer("floor", scaled.floor())
        rest = (scaled - self.floor).clamp(0.01, 0.99)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.soft = True

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        up = self.h() if self.soft else (self.alpha >= 0).to(w.dtype)
        return torch.clamp(self.floor + up, self.qmin, self.qmax) * self.s

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the tensor it wanted is seen."""


@torch.no_grad()
def capture(
    model: nn.Module, name: str, images: torch.Tensor, batch_size: int, output: bool = False
) -> torch.Tensor | None:
    """The input (before any attached input quantizer) or the output of submodule `name` for all
    `images`; None when it is not one tensor."""
    store: list[torch.Tensor] = []

    def keep(t: object, n_inputs: int) -> None:
        if n_inputs != 1 or not isinstance(t, torch.Tensor):
            raise StopForward
        store.append(t.detach())
        raise StopForward

    module = model.get_submodule(name)
    if output:
        handle = module.register_forward_hook(lambda _m, inp, out: keep(out, len(inp)))
    else:
        handle = module.register_forward_pre_hook(
            lambda _m, inp: keep(inp[0] if inp else None, len(inp)), prepend=True
        )
    run_hooked(model, handle, images, batch_size)
    return torch.cat(store) if len(store) * batch_size >= len(images) else None


@torch.no_grad()
def run_hooked(
    model: nn.Module, handle: torch.utils.hooks.RemovableHandle, x: torch.Tensor, batch_size: int
) -> None:
    """Run `model` over `x` in batches, each pass ending where a hook raises `StopForward`; the
    hook `handle` is removed afterwards."""
    try:
        for i in range(0, len(x), batch_size):
            try:
                model(x[i : i + batch_size])
            except StopForward:
                pass
    finally:
        handle.remove()


@contextmanager
def qdrop(module: nn.Module, p: float) -> Iterator[None]:
    """Input quantizers of `module` drop quantization with probability `p` (restored on exit)."""
    with temporarily((q for q in activation_quantizers(module) if q.enabled), "drop_prob", p):
        yield


def reconstruct(
    qmodel: nn.Module,
    fpmodel: nn.Module,
    images: torch.Tensor,
    cfg: QuantConfig,
    progress: bool = True,
) -> dict:
    """Reconstruct every unit of `qmodel` against `fpmodel` (same structure); returns each unit's
    loss over `images` before (the weights as given: GPTQ or nearest rounding) and after, and the
    units that kept those weights because the learned rounding did worse (a short budget, QDrop's
    noise)."""
    names = units(qmodel)
    losses, skipped, kept_nearest = {}, [], []
    qmodel.eval().requires_grad_(False)
    fpmodel.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    with StepBar(len(names) * cfg.recon_iters, "reconstruct", enabled=progress) as bar:
        for name in names:
            bs = cfg.calib_batch_size
            x_q = capture(qmodel, name, images, bs)
            x_fp = capture(fpmodel, name, images, bs)
            y_fp = capture(fpmodel, name, images, bs, output=True)
            if x_q is None or x_fp is None or y_fp is None or x_q.shape != x_fp.shape:
                skipped.append(name)
                bar.step(cfg.recon_iters)
                continue
            block = qmodel.get_submodule(name)
            saved = _learnable_state(block)
            before = unit_loss(block, x_q, y_fp, bs, cfg.amp)
            _reconstruct_unit(block, x_q, x_fp, y_fp, cfg, bar, gen)
            after = unit_loss(block, x_q, y_fp, bs, cfg.amp)
            if after > before:  # back to exactly the state `before` measured
                _restore_nearest(block, saved)
                after = before
                kept_nearest.append(name)
            losses[name] = [before, after]
    return {"block_losses": losses, "skipped": skipped, "kept_nearest": kept_nearest}


def unit_layers(block: nn.Module) -> list[QuantLayer]:
    """The quantized layers of a unit (the unit itself when it is one)."""
    return [block] if isinstance(block, QuantLayer) else list(quant_layers(block).values())


def _act_scales(block: nn.Module) -> list[torch.Tensor]:
    return [q.scale for q in activation_quantizers(block) if q.enabled]


def _learnable(block: nn.Module) -> list[torch.Tensor]:
    """What reconstruction changes: float weights and activation step sizes."""
    return [layer.weight for layer in unit_layers(block)] + _act_scales(block)


def _learnable_state(block: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in _learnable(block)]


@torch.no_grad()
def _restore_nearest(block: nn.Module, saved: list[torch.Tensor]) -> None:
    """Back to the state before reconstruction, weights baked with nearest rounding."""
    for t, v in zip(_learnable(block), saved, strict=True):
        t.copy_(v)
    for layer in unit_layers(block):
        layer.bake()


def _rec_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BRECQ's block loss: squared error summed over channels, averaged over images and pixels."""
    return (out - target).pow(2).sum(1).mean()


@torch.no_grad()
def unit_loss(
    block: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, amp: bool
) -> float:
    """The reconstruction loss over all of `x` (no QDrop, hard rounding): what is kept."""
    total = torch.zeros((), device=x.device)
    for i in range(0, len(x), batch_size):
        inp = x[i : i + batch_size]
        with autocast(inp.device, amp):
            out = block(inp.contiguous(memory_format=memory_format(inp))).float()
        total += _rec_loss(out, y[i : i + batch_size]) * len(inp)
    return float(total) / len(x)


def _reconstruct_unit(
    block: nn.Module,
    x_q: torch.Tensor,
    x_fp: torch.Tensor,
    y_fp: torch.Tensor,
    cfg: QuantConfig,
    bar: StepBar,
    gen: torch.Generator,
) -> None:
    layers = unit_layers(block)
    rounds = []
    for layer in layers:
        layer.rounding = AdaRound(layer.weight_quantizer, layer.weight)
        rounds.append(layer.rounding)
    act = _act_scales(block)
    alphas = [r.alpha for r in rounds]
    opt = torch.optim.Adam(
        [{"params": alphas, "lr": cfg.recon_lr_round}, {"params": act, "lr": cfg.recon_lr_act}],
        fused=x_q.is_cuda,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.recon_iters))
    n, iters = len(x_q), cfg.recon_iters
    warm = int(cfg.round_warmup * iters)
    dev_gen = torch.Generator(device=x_q.device).manual_seed(
        int(torch.randint(0, 2**31, (1,), generator=gen))
    )
    losses = torch.zeros(iters, device=x_q.device)
    with trainable(alphas + act), qdrop(block, cfg.qdrop_prob):
        for it in range(iters):
            idx = torch.randint(0, n, (min(cfg.recon_batch_size, n),), generator=gen)
            idx = idx.to(x_q.device)
            inp = x_q[idx]
            if cfg.qdrop_prob > 0:
                keep = torch.rand(inp.shape, generator=dev_gen, device=inp.device) < cfg.qdrop_prob
                inp = torch.where(keep, inp, x_fp[idx])
            with autocast(inp.device, cfg.amp):
                out = block(inp.contiguous(memory_format=memory_format(inp))).float()
            rec = _rec_loss(out, y_fp[idx])
            loss = rec
            if it >= warm and cfg.round_reg_weight > 0:
                beta = _beta(it - warm, iters - warm)
                loss = rec + cfg.round_reg_weight * sum(r.regularizer(beta) for r in rounds)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses[it] = rec.detach()
            if (it + 1) % cfg.log_every == 0 or it == iters - 1:
                bar.step(
                    cfg.log_every if (it + 1) % cfg.log_every == 0 else (it + 1) % cfg.log_every,
                    f"rec {float(losses[it]):.4f}",
                )
    for layer, r in zip(layers, rounds, strict=True):
        r.soft = False
        layer.bake()


def _beta(t: int, total: int, start: float = 20.0, end: float = 2.0) -> float:
    """AdaRound's annealing: beta from 20 (lenient) down to 2 (forces 0/1) over the iterations."""
    frac = t / max(1, total)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * frac))
