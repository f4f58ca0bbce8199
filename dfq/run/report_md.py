"""`report.md`: the one page a person reads after `dfq quantize`; `report.json` stays the record.

Every section is optional: a report from an older run, a run without export or accuracy, or a
stage that failed early still gives a page, with the missing sections left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfq.export.export_config import REEXPORT_UINT8
from dfq.files import atomic_path
from dfq.progress import format_duration

CAPTIONS = {
    "calibration": "The calibration images, one row per target class; each title is the FP "
    "model's top class and its confidence (green: it agrees with the target).",
    "losses": "Losses of each stage: they should fall during synthesis and distillation, and "
    "each block's loss (over the calibration images) should be lower after reconstruction than "
    "with nearest rounding; a block where learned rounding did worse keeps nearest rounding.",
    "layers": "Signal-to-quantization-noise ratio of each layer's output against the FP model, "
    "first layer on top: the shortest bars (low SQNR) are the layers that lose most, "
    "the first candidates for more bits.",
}


def write_report_md(
    report: Mapping[str, Any], path: str | Path, pictures: Mapping[str, str] | None = None
) -> Path:
    """Write the summary of `report` (as in report.json) to `path`, with `pictures` embedded.

    `pictures` maps a name (`calibration`, `losses`, `layers` get a caption) to a file name
    relative to the report, so the directory can be moved or zipped as a whole.
    """
    path = Path(path)
    text = render_report_md(report, pictures or {})
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(text)
    return path


def render_report_md(report: Mapping[str, Any], pictures: Mapping[str, str]) -> str:
    """The Markdown text of `write_report_md`."""
    sections = [
        _summary(report),
        _accuracy(report),
        _stages(report),
        _export(report),
        _unquantized(report),
        _pictures(pictures),
    ]
    title = f"# dfq {report.get('command', 'quantize')}: {report.get('model', 'model')}"
    return "\n\n".join([title] + [s for s in sections if s]) + "\n"


def _summary(report: Mapping[str, Any]) -> str:
    quant = _get(report, "config", "quant") or {}
    lines = [
        f"- **Model:** {report['model']}" if "model" in report else "",
        f"- **Protocol:** {report.get('protocol', 'deploy')}",
    ]
    if "wbits" in quant or "abits" in quant:
        bits = f"W{quant.get('wbits', '?')}A{quant.get('abits', '?')}"
        fl = report.get("first_last_bits", quant.get("first_last_bits"))
        if fl is not None:
            bits += ", first and last layer " + ("the same" if fl == "same" else f"{fl}-bit")
        lines.append(f"- **Bits:** {bits}")
    if "calibration" in report:
        n = report.get("num_calibration_images")
        lines.append(
            f"- **Calibration:** {report['calibration']}"
            + (f" ({n} images)" if n is not None else "")
        )
    if report.get("method"):
        lines.append(f"- **Method:** {report['method']}")
    for key, label in (("seed", "Seed"), ("device", "Device")):
        if key in report:
            lines.append(f"- **{label}:** {report[key]}")
    if isinstance(report.get("total_seconds"), (int, float)):
        lines.append(f"- **Total time:** {format_duration(report['total_seconds'])}")
    return "## Summary\n\n" + "\n".join(line for line in lines if line)


def _accuracy(report: Mapping[str, Any]) -> str:
    acc = report.get("accuracy")
    if not isinstance(acc, Mapping):
        return ""
    rows = [
        (name, acc[name])
        for name in ("fp", "quantized", "onnx")
        if isinstance(acc.get(name), Mapping)
    ]
    rows += [
        (k, v)
        for k, v in acc.items()
        if k not in ("fp", "quantized", "onnx") and isinstance(v, Mapping)
    ]
    if not rows:
        return ""
    fp = acc.get("fp") if isinstance(acc.get("fp"), Mapping) else {}
    out = ["## Accuracy", ""]
    if acc.get("data"):
        out += [f"On `{acc['data']}`; drops are in percentage points against the FP model.", ""]
    out += [
        "| model | top-1 (%) | top-5 (%) | top-1 drop | top-5 drop |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        cells = [_num(r.get("top1")), _num(r.get("top5"))]
        if name == "fp":
            cells += ["", ""]
        else:
            cells += [_drop(fp.get("top1"), r.get("top1")), _drop(fp.get("top5"), r.get("top5"))]
        out.append(f"| {_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


_LABELS = {"fp": "FP", "quantized": "quantized (PyTorch)", "onnx": "quantized (ONNX Runtime)"}


def _num(v: Any, digits: int = 2) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "–"


def _drop(fp: Any, q: Any) -> str:
    if not isinstance(fp, (int, float)) or not isinstance(q, (int, float)):
        return "–"
    return f"{fp - q:.2f}"


def _stages(report: Mapping[str, Any]) -> str:
    stages = report.get("stages")
    if not isinstance(stages, Mapping) or not stages:
        return ""
    out = ["## Stages", "", "| stage | time | final losses |", "|---|---:|---|"]
    for name, info in stages.items():
        if not isinstance(info, Mapping):
            continue
        seconds = info.get("seconds")
        time_ = _time(seconds) if isinstance(seconds, (int, float)) else "–"
        out.append(f"| {name} | {time_} | {_stage_losses(info)} |")
    return "\n".join(out)


def _time(seconds: float) -> str:
    """Short stages keep a decimal (`1.5s`); longer ones read as `7m30s`."""
    return f"{seconds:.1f}s" if seconds < 10 else format_duration(seconds)


def _stage_losses(info: Mapping[str, Any]) -> str:
    """The losses a stage recorded: synthesis terms, KD loss, KD first -> last."""
    parts = []
    losses = info.get("losses")
    if isinstance(losses, Mapping):
        parts += [f"{k} {_loss(v)}" for k, v in losses.items() if isinstance(v, (int, float))]
    if isinstance(info.get("kd_loss"), (int, float)):
        parts.append(f"KD {_loss(info['kd_loss'])}")
    if isinstance(info.get("kd_first"), (int, float)) and isinstance(
        info.get("kd_last"), (int, float)
    ):
        parts.append(f"KD {_loss(info['kd_first'])} → {_loss(info['kd_last'])}")
    return ", ".join(parts)


def _loss(v: float) -> str:
    return f"{v:.4g}"


def _export(report: Mapping[str, Any]) -> str:
    export = report.get("export")
    check = export.get("check") if isinstance(export, Mapping) else None
    if not isinstance(check, Mapping):
        return ""
    out = ["## Export check", ""]
    if export.get("path"):
        out += [
            f"`{export['path']}` run by ONNX Runtime against the PyTorch model"
            + (f" on {check['images']} images" if "images" in check else "")
            + "; deviations in output steps (1/255 of the logits' range).",
            "",
        ]
    for key, label, fmt in (
        ("median_max_dev_steps", "median max deviation (steps)", "{:.3g}"),
        ("max_dev_steps", "max deviation (steps)", "{:.3g}"),
        ("within_tolerance", "images within one step", "{:.1%}"),
        ("argmax_agreement", "top-1 agreement", "{:.1%}"),
    ):
        if isinstance(check.get(key), (int, float)):
            out.append(f"- {label}: {fmt.format(check[key])}")
    kind = WEIGHT_CONTAINERS.get(export.get("weight_type"))
    if kind:
        out += ["", kind]
    return "\n".join(out)


WEIGHT_CONTAINERS = {
    "int8": "Weights are stored as int8 codes: onnxruntime runs them exactly on x86 CPUs with VNNI "
    "and on other architectures, but saturates on x86 CPUs without it (AVX2 only); to deploy "
    f"on such a CPU, re-export: `{REEXPORT_UINT8}`.",
    "uint8": "Weights are stored as uint8 codes at zero point 128: exact on every CPU "
    "(onnxruntime's U8U8 kernels), slower than int8 where VNNI exists "
    "(`dfq export DIR --out model-s8.onnx --weight-type int8`).",
}


def _unquantized(report: Mapping[str, Any]) -> str:
    layers = report.get("unquantized_layers")
    if layers is None:
        return ""
    if not layers:
        return "## Unquantized layers\n\nNone: every conv and linear layer is quantized."
    if isinstance(layers, Mapping):
        entries = [f"`{n}`: {why}" for n, why in layers.items()]
    else:  # "name (Type): why", as `dfq.quant.insert` words them
        entries = [
            f"`{e.split(' ', 1)[0]}` {e.split(' ', 1)[1]}" if " " in e else f"`{e}`"
            for e in map(str, layers)
        ]
    body = "\n".join(f"- {e}" for e in entries)
    return "## Unquantized layers\n\nThese stay in floating point:\n\n" + body


def _pictures(pictures: Mapping[str, str]) -> str:
    if not pictures:
        return ""
    out = ["## Pictures"]
    for name, file in pictures.items():
        out += ["", f"### {name.capitalize()}", "", f"![{name}]({file})"]
        if name in CAPTIONS:
            out += ["", CAPTIONS[name]]
    return "\n".join(out)


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d
