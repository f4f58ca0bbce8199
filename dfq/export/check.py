"""The export check: onnxruntime must compute what the PyTorch (fake-quant) model computes.

The optimized onnxruntime graph runs integer kernels whose requantization rounds a product of scales
once, where PyTorch rounds a float convolution: at near-ties a code moves by one step, and that step
propagates. So the check is stated in output steps, as Brevitas does: the logits' "step" is the grid
an 8-bit per-tensor quantizer would put on them (range / 255). It decides by the worst cases, not
the typical image: nearly every image must stay within `tolerance` steps and keep its argmax,
beyond what each implementation's own rounding explains (measured against the model evaluated in
float64, see `check_against_torch`).

When it fails, the message names the first quantizer output (an activation DequantizeLinear node)
that already disagrees with PyTorch, found by an unoptimized onnxruntime run that exposes them all.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from dfq.errors import DfqFailure
from dfq.export.export_config import ExportConfig
from dfq.export.runtime import onnx_predictor, open_session, session_options
from dfq.export.trace import INPUT_NAME, OUTPUT_NAME
from dfq.quant.quantizer import Quantizer

DIAGNOSE_IMAGES = 8  # images the diagnosis run uses (failing ones first): it holds every activation
NODE_OFF_SHARE = 0.005  # a node diverges when more of its values than this are off by > one step
ONE_STEP = 1.0 + 1e-3  # slack for float error on values exactly one step apart


def output_step(logits: torch.Tensor) -> float:
    """One step of an 8-bit grid over the logits' range: the unit deviations are measured in."""
    return float(logits.max() - logits.min()) / 255 or 1.0


def per_image(
    reference: torch.Tensor, got: torch.Tensor, step: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's largest deviation in steps (NaN stays NaN) and whether its argmax agrees."""
    return ((got - reference).abs() / step).amax(dim=1), got.argmax(1) == reference.argmax(1)


def compare(
    reference: torch.Tensor, got: torch.Tensor, step: float, tolerance: float = 1.0
) -> dict:
    """Deviation statistics in units of `step`, and argmax agreement."""
    dev, agree = per_image(reference, got, step)
    return {
        "images": len(reference),
        "step": round(step, 6),
        "median_max_dev_steps": round(float(dev.median()), 4),
        "max_dev_steps": round(float(dev.max()), 4),
        "within_tolerance": round(float((dev <= tolerance).float().mean()), 4),
        "argmax_agreement": round(float(agree.float().mean()), 4),
    }


def _recorder(outs: list[torch.Tensor]):
    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        outs.append(out.detach().float().clone())  # later in-place ops must not reach it

    return hook


def _torch_outputs(
    model: nn.Module, images: torch.Tensor, tags: list[str] | None = None
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    """Logits in eval mode, and every output of the modules named `tags`, call by call."""
    seen: dict[str, list[torch.Tensor]] = {t: [] for t in tags or []}
    handles = []
    for tag, outs in seen.items():
        handles.append(model.get_submodule(tag).register_forward_hook(_recorder(outs)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(images.float()).float()
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return logits, seen


def activation_dqs(proto: onnx.ModelProto, model: nn.Module) -> list[tuple[onnx.NodeProto, str]]:
    """Activation DequantizeLinear nodes in graph order, with the quantizer (module name) each ends.

    `{tag}/DQ` is where a quantizer's output is complete; `{tag}/DQ8` of a narrow grid comes
    before its Clip, so it is no PyTorch value.
    """
    out = []
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or not node.name.endswith("/DQ"):
            continue
        tag = node.name[: -len("/DQ")]
        try:
            q = model.get_submodule(tag)
        except AttributeError:  # the model no longer has that module: nothing to compare with
            continue
        if isinstance(q, Quantizer):
            out.append((node, tag))
    return out


def session_with_outputs(
    proto: onnx.ModelProto, names: list[str], tmp: Path
) -> ort.InferenceSession:
    """An unoptimized session of a copy of `proto` that also returns the tensors `names`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in present
    )
    path = tmp / "diagnose.onnx"
    onnx.save(copy, str(path))
    return open_session(path, options=session_options(optimize=False))


def _off_share(ref: torch.Tensor, got: np.ndarray, step: torch.Tensor) -> float:
    """Share of values more than one `step` apart (non-finite values count as off)."""
    dev = (torch.from_numpy(got).float() - ref).abs() / step
    return float((~(dev <= ONE_STEP)).float().mean())


def _node_step(
    q: Quantizer, ref: torch.Tensor, node: onnx.NodeProto, inits: dict[str, np.ndarray]
) -> torch.Tensor:
    """The quantizer's step, or the graph's own DQ scale where that is finer.

    They are equal in a faithful export; where they differ, the finer grid is the one on which a
    divergence shows: counted in a coarser PyTorch step, a node that rounds on another grid can
    stay within one step.
    """
    step = q.step(ref).detach().float()
    onnx_scale = inits.get(node.input[1])
    if onnx_scale is not None and onnx_scale.size == 1:
        step = torch.minimum(step, torch.tensor(float(onnx_scale.reshape(()))))
    return step


def first_diverging_node(
    model: nn.Module, path: str | Path, images: torch.Tensor, tolerance: float = 1.0
) -> str:
    """Where onnxruntime and PyTorch part ways, as a phrase for the failure message.

    Each activation DequantizeLinear output of the exported graph is compared, in graph order, with
    the output of the PyTorch quantizer it lowers, in that quantizer's steps (see `_node_step`); the
    first one with more than `NODE_OFF_SHARE` of its values off by more than one step is named. The
    run is unoptimized, so when none diverges and its logits agree (within `tolerance` output
    steps), the fused integer kernels are the cause.
    """
    proto = onnx.load(str(path))
    dqs = activation_dqs(proto, model)
    reference, seen = _torch_outputs(model, images, sorted({tag for _, tag in dqs}))
    with tempfile.TemporaryDirectory() as tmp:
        sess = session_with_outputs(proto, [n.output[0] for n, _ in dqs], Path(tmp))
        names = [OUTPUT_NAME] + [n.output[0] for n, _ in dqs]
        got = sess.run(names, {INPUT_NAME: images.detach().float().cpu().numpy()})
    inits = {
        t.name: numpy_helper.to_array(t)
        for t in proto.graph.initializer
        if t.name in {n.input[1] for n, _ in dqs}
    }
    calls: dict[str, int] = {}
    for (node, tag), value in zip(dqs, got[1:], strict=True):
        k = calls[tag] = calls.get(tag, -1) + 1
        if k >= len(seen[tag]) or tuple(seen[tag][k].shape) != value.shape:
            continue  # no PyTorch value that matches this node
        ref = seen[tag][k]
        share = _off_share(ref, value, _node_step(model.get_submodule(tag), ref, node, inits))
        if share > NODE_OFF_SHARE:
            return (
                f"first diverging node: {node.name} ({node.op_type}), {100 * share:.1f}% of "
                f"its values off by more than one step"
            )
    dev, agree = per_image(reference, torch.from_numpy(got[0]).float(), output_step(reference))
    if bool((dev <= tolerance).all() and agree.all()):
        return (
            f"no quantizer output of {len(dqs)} diverges and the unoptimized graph agrees: "
            f"the divergence appears only after onnxruntime's fused integer kernels"
        )
    return (
        f"no quantizer output of {len(dqs)} diverges but the unoptimized graph's logits do: "
        f"the divergence comes after the last quantizer"
    )


def runtime_spread(
    path: str | Path,
    images: torch.Tensor,
    fused: torch.Tensor,
    step: float,
    share: float,
    threads: int | None = None,
) -> tuple[float, float]:
    """How far onnxruntime's fused integer kernels stray from its own reference (unoptimized,
    float32) execution of the same graph: the deviation in output steps that `share` of the
    images stay within, and the share of images whose argmax changes. Both execute the exported
    graph, so this is onnxruntime's rounding noise whatever PyTorch computes."""
    opts = session_options(threads, optimize=False)
    reference = onnx_predictor(open_session(path, options=opts))(images)
    return _spread(reference, fused, step, share)


def _spread(a: torch.Tensor, b: torch.Tensor, step: float, share: float) -> tuple[float, float]:
    dev, agree = per_image(a, b, step)
    return float(torch.quantile(dev.nan_to_num(float("inf")), share)), float(
        1.0 - agree.float().mean()
    )


@torch.no_grad()
def exact_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`model`'s logits evaluated in float64 (its arithmetic made exact for the check: float32
    sums, scale products and divisions round where float64 does not), returned as float32."""
    return copy.deepcopy(model).eval().double()(images.double()).float()


def torch_spread(
    model: nn.Module, images: torch.Tensor, logits: torch.Tensor, step: float, share: float
) -> tuple[float, float]:
    """How far PyTorch's float32 fake-quant model strays from its exact evaluation
    (`exact_logits`): the deviation in output steps `share` of the images stay within, and the
    share whose argmax changes."""
    return _spread(exact_logits(model, images), logits, step, share)


def check_against_torch(
    model: nn.Module,
    path: str | Path,
    images: torch.Tensor,
    cfg: ExportConfig,
    threads: int | None = None,
) -> dict:
    """Run both on `images`; raise DfqFailure unless nearly all images agree (see ExportConfig).

    Passing needs `cfg.min_agreement` of the images to keep their argmax and `cfg.min_within` of
    them to deviate by at most the allowed number of output steps: `cfg.tolerance` plus each
    implementation's own rounding noise, measured without the other: PyTorch's as its float32
    model against its exact (float64) evaluation (`torch_spread`), onnxruntime's as its fused
    integer kernels against its float32 reference execution of the same graph
    (`runtime_spread`). A tie that rounds one way in one and the other way in the other moves a
    code by one step, and later layers amplify it: in a 4-bit mobile net one value at a tie can
    move the logits by tens of steps and flip an argmax (so does any other correct arithmetic);
    a broken layer moves many values on every image. Likewise the argmax agreement needed is
    lowered by the share of argmax changes each implementation's noise makes (a model whose top
    classes are that close is reported in the stats). The failure names where PyTorch and
    onnxruntime part ways. onnxruntime gets `threads` intra-op threads, by default as many as
    PyTorch uses (what `--threads` sets).
    """
    threads = threads or torch.get_num_threads()
    reference, _ = _torch_outputs(model, images)
    got = onnx_predictor(open_session(path, options=session_options(threads)))(images)
    step = output_step(reference)
    spread, ort_flips = runtime_spread(path, images, got, step, cfg.min_within, threads)
    own, torch_flips = torch_spread(model, images, reference, step, cfg.min_within)
    allowed = cfg.tolerance + spread + own
    needed = cfg.min_agreement - ort_flips - torch_flips
    stats = compare(reference, got, step, cfg.tolerance)
    dev, agree = per_image(reference, got, step)
    ok_dev = dev <= allowed  # NaN compares False
    agreement, within = float(agree.float().mean()), float(ok_dev.float().mean())
    stats.update(
        runtime_spread_steps=round(spread, 4),
        torch_spread_steps=round(own, 4),
        allowed_steps=round(allowed, 4),
        within_allowed=round(within, 4),
        runtime_argmax_changes=round(ort_flips, 4),
        torch_argmax_changes=round(torch_flips, 4),
        agreement_needed=round(needed, 4),
    )
    if agreement >= needed and within >= cfg.min_within:
        return stats
    order = torch.argsort((ok_dev & agree).int(), stable=True)  # failing images first
    where = first_diverging_node(model, path, images[order[:DIAGNOSE_IMAGES]], allowed)
    raise DfqFailure(
        f"onnxruntime disagrees with PyTorch on {path}: argmax agrees on {100 * agreement:.1f}% "
        f"of {len(images)} images (needed {100 * needed:.1f}%), "
        f"{100 * within:.1f}% within {allowed:.2f} output steps (needed "
        f"{100 * cfg.min_within:.1f}%: {cfg.tolerance:g} + onnxruntime's own spread {spread:.2f} "
        f"+ PyTorch's from exact arithmetic {own:.2f}), worst "
        f"{stats['max_dev_steps']:.2f} steps; {where}"
    )
