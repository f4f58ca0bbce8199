"""Options shared by several commands, each defined once so its type and help match everywhere."""

from __future__ import annotations

import functools
import re
from typing import Any

import click
import yaml

from dfq.cli.group import enable_debug
from dfq.config import read_yaml
from dfq.device import limit_threads
from dfq.device import resolve_device as resolve
from dfq.errors import DfqError
from dfq.models import load_model
from dfq.models.data_config import INTERPOLATIONS
from dfq.progress import set_quiet
from dfq.synth import SYNTHESIZERS
from dfq.synth.registry import get_synthesizer
from dfq.synth.synth_config import PARAMS

_META_KEY = "dfq.model_extras"
_THREADS_KEY = "dfq.threads"


def _floats(ctx, param, value):
    if value is None:
        return None
    parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(
            f"expected numbers like '0.485,0.456,0.406', got '{value}'"
        ) from None


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
        raise click.BadParameter(
            f"sizes must be positive: '32', '32x32' or '3 32 32', got '{value}'"
        )
    return nums


_EXTRA_OPTIONS = [
    click.option(
        "--num-classes",
        type=click.IntRange(min=1),
        default=None,
        help="Classifier width when it differs from the architecture's (default: read from "
        "the --weights checkpoint).",
    ),
    click.option(
        "--trust-checkpoint",
        is_flag=True,
        help="Allow MODEL to be a TorchScript or whole pickled-model file (runs code from it).",
    ),
    click.option(
        "--input-size",
        callback=_input_size,
        default=None,
        help="Input size the model expects: '32', '32x32' or '3 32 32'.",
    ),
    click.option(
        "--mean", callback=_floats, default=None, help="Per-channel mean, e.g. '0.5,0.5,0.5'."
    ),
    click.option(
        "--std", callback=_floats, default=None, help="Per-channel std, e.g. '0.25,0.25,0.25'."
    ),
    click.option(
        "--interpolation",
        type=click.Choice(INTERPOLATIONS),
        default=None,
        help="Resize interpolation for image folders.",
    ),
    click.option(
        "--crop-pct",
        type=click.FloatRange(0, 1, min_open=True),
        default=None,
        help="Centre-crop fraction for image folders.",
    ),
]
_EXTRA_NAMES = (
    "num_classes",
    "trust_checkpoint",
    "input_size",
    "mean",
    "std",
    "interpolation",
    "crop_pct",
)

model_weights = click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    default=None,
    help="Checkpoint to load: a state dict, or a dict holding one under 'state_dict' or 'model'.",
)
model_pretrained = click.option(
    "--pretrained/--no-pretrained",
    default=None,
    help="Use the published weights from the torch.hub / Hugging Face cache (default when no "
    "--weights is given); --no-pretrained gives random weights.",
)
device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
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
    return {
        k: extras.get(k)
        for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
        if extras.get(k) is not None
    }


def open_model(target: str, weights, pretrained):
    """`load_model` with every model option the user gave on the command line."""
    extras = model_extras()
    return load_model(
        target,
        weights=weights,
        pretrained=pretrained,
        num_classes=extras.get("num_classes"),
        trust_checkpoint=bool(extras.get("trust_checkpoint")),
        data_overrides=data_overrides(),
    )


def resolve_device(name: str) -> str:
    """`dfq.device.resolve_device`, with its error reported as a bad --device option."""
    try:
        return resolve(name)
    except DfqError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None


# ------------------------------------------------------------------------ recipe and run options
recipe = click.option(
    "--recipe",
    default=None,
    help="Recipe: a shipped name (cifar, imagenet), or a YAML file whose values are layered over "
    "the shipped recipe for MODEL (chosen by input size).",
)
num_images = click.option(
    "-n",
    "--num-images",
    type=click.IntRange(min=1),
    default=None,
    help="Number of calibration images [recipe].",
)
seed = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Random seed; the same seed on the same device gives the same result [recipe: 0].",
)
overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
resume = click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run with the same --out, model, recipe and seed from the work "
    "it kept (.OUT.partial beside the output); refused if any of them differ.",
)
quiet = click.option(
    "--quiet",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, param, v: _quiet(ctx) if v else None,
    help="No progress bars or progress lines on stderr.",
)


def _quiet(ctx: click.Context) -> None:
    """Silence progress for this command only (restored when it ends)."""
    set_quiet(True)
    ctx.call_on_close(lambda: set_quiet(False))


method = click.option(
    "--method",
    default=None,
    callback=lambda ctx, param, v: None if v is None else get_synthesizer(v).name,
    help=f"Synthesis method: {', '.join(SYNTHESIZERS)} [recipe: rgal].",
)
param = click.option(
    "--param",
    type=click.Choice(PARAMS),
    default=None,
    help="Image parameterization of bn / rgal: a generator network or free pixels "
    "[recipe: generator].",
)


def _sets(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """`synth.iters=40` items as {section: {key: value}}, each value read as YAML; a nested
    section's key takes one more name (`synth.rdskd.iters=40`)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        section, *names = key.strip().split(".")
        if not (eq and section and names and all(names) and raw.strip()):
            raise click.BadParameter(
                f"expected SECTION.KEY=VALUE such as synth.iters=40, got '{item}'"
            )
        try:
            value = read_yaml(raw)
        except yaml.YAMLError:
            raise click.BadParameter(f"the value in '{item}' is not valid YAML") from None
        into = out.setdefault(section, {})
        for name in names[:-1]:
            into = into.setdefault(name, {})
            if not isinstance(into, dict):
                raise click.BadParameter(
                    f"'{item}' sets a key inside '{name}', which another --set made a plain value"
                )
        into[names[-1]] = value
    return out


set_values = click.option(
    "--set",
    "sets",
    multiple=True,
    callback=_sets,
    metavar="SECTION.KEY=VALUE",
    help="Change one recipe value, e.g. --set synth.iters=40 --set quant.kd_iters=0 or, in a "
    "nested section, --set synth.rdskd.iters=80 (VALUE is YAML: numbers, true/false, [lists]). "
    "Repeatable; wins over --recipe, loses to the command's own options.",
)


def threads_option(f):
    """--threads N: PyTorch and onnxruntime intra-op threads for the whole command.

    The command runs inside `limit_threads`; onnxruntime users read the number with `threads()`.
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        n = kwargs.pop("threads")
        click.get_current_context().meta[_THREADS_KEY] = n
        with limit_threads(n):
            return f(*args, **kwargs)

    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=None,
        help="CPU threads for PyTorch and onnxruntime (default: one per core). On a shared "
        "machine give each process its share: processes that all take every core slow "
        "each other down several times.",
    )(wrapper)


def threads() -> int | None:
    """The running command's --threads, or None (each library's default)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_THREADS_KEY) if ctx else None


debug = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=enable_debug,
    help="Show full Python tracebacks for errors (also accepted before the command).",
)
