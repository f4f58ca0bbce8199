"""Save and reload quantized models without pickling modules.

`quantized.pt` holds the model name, its data config, the quant config, each quantized layer's
quantizer layout and the state dict. Reloading builds the architecture (no pretrained weights
needed), folds BN, swaps in the same quantized layers and loads the state dict strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfq.config import config_from_dict, config_to_dict
from dfq.errors import DfqError
from dfq.models import DataConfig, load_model
from dfq.quant.attached import WHERE, attach_quantizer, attached_quantizers
from dfq.quant.fold import fold_bn
from dfq.quant.insert import quantizable
from dfq.quant.layers import QUANT_LAYERS, quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import Quantizer
from dfq.quant.replace import replace_modules

FORMAT = "dfq.quantized/1"
FILENAME = "quantized.pt"


def _qspec(q: Quantizer | None) -> dict | None:
    return None if q is None else {"bits": q.bits, "signed": q.signed}


def quantized_payload(
    model: nn.Module, name: str, data_config: DataConfig, cfg: QuantConfig
) -> dict[str, Any]:
    layers = {
        n: {
            "weight": _qspec(m.weight_quantizer),
            "input": _qspec(m.input_quantizer),
            "output": _qspec(m.output_quantizer),
            "same_pad": list(getattr(m, "same_pad", None) or []) or None,
        }
        for n, m in quant_layers(model).items()
    }
    return {
        "format": FORMAT,
        "model": name,
        "data_config": data_config.to_dict(),
        "quant": config_to_dict(cfg),
        "layers": layers,
        "attached": {
            where: {n: _qspec(q) for n, q in attached_quantizers(model, where).items()}
            for where in WHERE
        },
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_quantized(
    model: nn.Module, path: str | Path, name: str, data_config: DataConfig, cfg: QuantConfig
) -> None:
    torch.save(quantized_payload(model, name, data_config, cfg), path)


def load_quantized(path: str | Path) -> tuple[nn.Module, DataConfig]:
    """A directory written by `dfq quantize` (or a `quantized.pt`) -> (eval model, data config)."""
    p = Path(path)
    file = p / FILENAME if p.is_dir() else p
    if not file.is_file():
        raise DfqError(f"{p}: no {FILENAME} here; give a directory written by `dfq quantize`")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unreadable file is the user's to fix)
        raise DfqError(f"{file} cannot be read ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DfqError(f"{file} is not a dfq quantized model (expected format {FORMAT})")
    data_config = DataConfig.from_dict(payload["data_config"])
    model, _ = load_model(payload["model"], pretrained=False, num_classes=data_config.num_classes)
    config_from_dict(QuantConfig, payload["quant"], "quantized.pt")  # validates
    apply_payload(model, payload)
    return model.eval(), data_config


def apply_payload(model: nn.Module, payload: dict[str, Any]) -> None:
    """Turn a float model of the right architecture into the saved quantized one, in place."""
    data_config = DataConfig.from_dict(payload["data_config"])
    attached = payload.get("attached") or {"input": payload.get("block_inputs", {})}
    rebuild(model, payload["layers"], data_config, attached)
    model.load_state_dict(payload["state_dict"], strict=True)


def rebuild(
    model: nn.Module,
    layers: dict[str, dict],
    data_config: DataConfig,
    attached: dict[str, dict[str, dict]] | None = None,
) -> None:
    """Give a fresh float model the folded, quantized structure recorded in `layers`, and the
    quantizers attached to module inputs / outputs (see `dfq.quant.attached`)."""
    model.eval()
    fold_bn(model, torch.zeros(1, *data_config.input_size))

    def make(name: str, m: nn.Module) -> nn.Module:
        spec = layers[name]
        float_type = next(t for t in QUANT_LAYERS if isinstance(m, t))
        inp = spec["input"]
        q = QUANT_LAYERS[float_type].from_float(
            m,
            spec["weight"]["bits"],
            None if inp is None else inp["bits"],
            input_signed=bool(inp and inp["signed"]),
            same_pad=spec.get("same_pad"),
        )
        if spec.get("output"):
            q.output_quantizer = Quantizer(spec["output"]["bits"], spec["output"]["signed"])
        return q

    done = replace_modules(model, lambda n, m: n in layers and quantizable(m), make)
    missing = sorted(set(layers) - set(done))
    if missing:
        raise DfqError(f"quantized layers {', '.join(missing)} do not exist in this model")
    for where, specs in (attached or {}).items():
        for name, spec in specs.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise DfqError(
                    f"module {name!r} with an attached {where} quantizer does not exist "
                    "in this model"
                ) from None
            attach_quantizer(module, Quantizer(spec["bits"], spec["signed"]), where)
