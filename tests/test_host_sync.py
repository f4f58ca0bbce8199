"""No host sync inside the synthesis, reconstruction and distillation loops (issue 18).

On a GPU, `.item()`, `.cpu()`, `nonzero`, boolean-mask indexing and Python truth tests of a tensor
make the host wait for the device. The loops may do that only every `log_every` steps, so the
number of such calls must not grow with the number of steps when `log_every` covers them all.
Counted on the CPU with a TorchFunctionMode, which sees the calls a GPU run would make.
"""

from __future__ import annotations

import copy
import os
import traceback

import torch
from torch.overrides import TorchFunctionMode

from dfq.models import load_model
from dfq.quant.distill import distill
from dfq.quant.insert import prepare
from dfq.quant.pipeline import quantizers_disabled
from dfq.quant.quant_config import QuantConfig
from dfq.quant.reconstruct import reconstruct
from dfq.synth import SynthConfig, synthesize
from tests.synth.tiny import tiny_config, tiny_model

SYNCING = {
    "item",
    "cpu",
    "tolist",
    "numpy",
    "nonzero",
    "masked_select",
    "__bool__",
    "__float__",
    "__int__",
    "argwhere",
}


class SyncCounter(TorchFunctionMode):
    """Counts syncing calls made by dfq's own code (torch's CPU-only internals, such as a
    non-fused Adam reading its step counter, do not happen on a GPU with fused Adam)."""

    def __init__(self, origin: str = f"{os.sep}dfq{os.sep}") -> None:
        super().__init__()
        self.origin = origin
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING or (name == "__getitem__" and len(args) > 1 and _bool_index(args[1])):
            if self.origin in _caller():
                self.calls.append(name if name in SYNCING else "bool-mask indexing")
        return func(*args, **(kwargs or {}))


DISPATCH = (f"torch{os.sep}overrides.py", f"torch{os.sep}_tensor.py")


def _caller() -> str:
    """The file that called the tensor method: the first frame above the counter's own two
    (`__torch_function__`, this one) and torch's Python dispatch wrappers."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.endswith(DISPATCH):
            return frame.filename
    return ""


def _bool_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _count(run) -> list[str]:
    with SyncCounter() as counter:
        run()
    return counter.calls


def _same_for_more_steps(make_run, short: int, long: int) -> None:
    few, many = _count(make_run(short)), _count(make_run(long))
    assert len(many) == len(few), (
        f"{len(many) - len(few)} more host syncs for {long - short} more steps: {sorted(set(many))}"
    )


def test_synthesis_loop_syncs_only_every_log_every_steps():
    for method in ("rgal", "dfad", "rdskd"):

        def run(iters, method=method):
            cfg = SynthConfig(
                method=method,
                num_images=8,
                batch_size=8,
                iters=iters,
                log_every=1000,
                dfad={"iters": iters},
                rdskd={"iters": iters},
            )
            return lambda: synthesize(
                tiny_model(), cfg, tiny_config(), progress=False, student=tiny_model(seed=1)
            )

        _same_for_more_steps(run, 3, 9)


def _quantized(seed: int = 0):
    torch.manual_seed(seed)
    model, _ = load_model("cifar10_resnet20", pretrained=False)
    teacher = copy.deepcopy(model)
    calib = torch.randn(16, 3, 32, 32)
    cfg = QuantConfig(calib_batch_size=16, recon_batch_size=8, kd_batch_size=8, log_every=1000)
    prepare(model, cfg, [calib])
    return model, teacher, calib, cfg


def test_reconstruction_loop_syncs_only_every_log_every_steps():
    def run(iters):
        model, _, calib, cfg = _quantized()
        cfg.recon_iters = iters
        fp = copy.deepcopy(model)

        def go():
            with quantizers_disabled(fp):
                reconstruct(model, fp, calib, cfg, progress=False)

        return go

    _same_for_more_steps(run, 2, 6)


def test_distillation_loop_syncs_only_every_log_every_steps():
    def run(iters):
        model, teacher, calib, cfg = _quantized()
        cfg.kd_iters = iters
        return lambda: distill(model, teacher, calib, cfg, progress=False)

    _same_for_more_steps(run, 2, 6)


def test_the_counter_sees_what_a_sync_is():
    x = torch.randn(4)
    with SyncCounter(origin=os.path.basename(__file__)) as counter:
        x.sum().item()
        x[x > 0]
        bool(x.any())
        x + 1  # no sync
        torch.optim.Adam([torch.zeros(2, requires_grad=True)]).step()  # torch's own: not counted
    assert counter.calls == ["item", "bool-mask indexing", "__bool__"]
