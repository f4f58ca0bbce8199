"""Options shared by several commands."""
from __future__ import annotations

import functools
import re

import click

from dfq.device import resolve_device as resolve
from dfq.errors import DfqError
from dfq.models import load_model
from dfq.models.data_config import INTERPOLATIONS

_META_KEY = "dfq.model_extras"


def _floats(ctx, param, value):
    if value is None:
        return None
    parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected numbers like '0.485,0.456,0.406', got '{value}'") from None


def _input_size(ctx, param, value):
    if value is None:
        return None
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        nums = tuple(int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected '32', '32x32' or '3 32 32', got '{value}'") from None
    if len(nums) == 1:
        nums = (3, nums[0], nums[0])
    elif len(nums) == 2:
        nums = (3, *nums)
    if len(nums) != 3 or min(nums) <= 0:
        raise click.BadParameter(f"sizes must be positive: '32', '32x32' or '3 32 32', got '{value}'")
    return nums


_EXTRA_OPTIONS = [
    click.option("--num-classes", type=click.IntRange(min=1), default=None,
                 help="Classifier width when it differs from the architecture's (default: read from "
                      "the --weights checkpoint)."),
    click.option("--trust-checkpoint", is_flag=True,
                 help="Allow MODEL to be a TorchScript or whole pickled-model file (runs code from it)."),
    click.option("--input-size", callback=_input_size, default=None,
                 help="Input size the model expects: '32', '32x32' or '3 32 32'."),
    click.option("--mean", callback=_floats, default=None, help="Per-channel mean, e.g. '0.5,0.5,0.5'."),
    click.option("--std", callback=_floats, default=None, help="Per-channel std, e.g. '0.25,0.25,0.25'."),
    click.option("--interpolation", type=click.Choice(INTERPOLATIONS), default=None,
                 help="Resize interpolation for image folders."),
    click.option("--crop-pct", type=click.FloatRange(0, 1, min_open=True), default=None,
                 help="Centre-crop fraction for image folders."),
]
_EXTRA_NAMES = ("num_classes", "trust_checkpoint", "input_size", "mean", "std", "interpolation",
                "crop_pct")

model_weights = click.option(
    "--weights", type=click.Path(dir_okay=False), default=None,
    help="Checkpoint to load: a state dict, or a dict holding one under 'state_dict' or 'model'.",
)
model_pretrained = click.option(
    "--pretrained/--no-pretrained", default=None,
    help="Use the published weights from the torch.hub / Hugging Face cache (default when no "
         "--weights is given); --no-pretrained gives random weights.",
)
device = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to run: 'auto' takes a GPU when there is one.",
)


def model_options(f):
    """--weights, --pretrained, and the options that describe the user's model and preprocessing.

    The command receives `weights` and `pretrained`; the rest are kept for `open_model`, so every
    command that loads a model takes the same flags with the same meaning.
    """
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        extras = {name: kwargs.pop(name) for name in _EXTRA_NAMES}
        click.get_current_context().meta[_META_KEY] = extras
        return f(*args, **kwargs)

    for opt in reversed(_EXTRA_OPTIONS):
        wrapper = opt(wrapper)
    return model_weights(model_pretrained(wrapper))


def model_extras() -> dict:
    """The model options of the running command (num_classes, trust_checkpoint, data overrides)."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get(_META_KEY, {})) if ctx else {}


def data_overrides() -> dict:
    extras = model_extras()
    return {k: extras.get(k) for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
            if extras.get(k) is not None}


def open_model(target: str, weights, pretrained):
    """`load_model` with every model option the user gave on the command line."""
    extras = model_extras()
    return load_model(target, weights=weights, pretrained=pretrained,
                      num_classes=extras.get("num_classes"),
                      trust_checkpoint=bool(extras.get("trust_checkpoint")),
                      data_overrides=data_overrides())


def resolve_device(name: str) -> str:
    """`dfq.device.resolve_device`, with its error reported as a bad --device option."""
    try:
        return resolve(name)
    except DfqError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
