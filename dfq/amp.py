"""The `amp:` modes of the synth and quant sections, torch-free so the configs can check them.

`dfq.modes.autocast` turns a mode into torch's autocast: bfloat16 on CUDA for `auto`, everywhere
for `bf16`, nowhere for `off`.
"""

from __future__ import annotations

from dfq.errors import DfqError

AMP_MODES = ("auto", "bf16", "off")


def amp_mode(value: object) -> str:
    """`value` as one of AMP_MODES (YAML 1.1 reads a bare `off` as false); a DfqError otherwise."""
    if value is False:
        return "off"
    if value not in AMP_MODES:
        raise DfqError(f"amp must be one of {', '.join(AMP_MODES)}, got {value!r}")
    return value
