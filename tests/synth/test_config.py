import pytest

from dfq.errors import DfqError
from dfq.run.recipe import default_recipe, synth_config
from dfq.synth.synth_config import SynthConfig
from tests.synth.tiny import tiny_config


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_images=0),
        dict(batch_size=-1),
        dict(iters=0),
        dict(param="gan"),
        dict(relation_direction="up"),
        dict(focal_window=(1.0, 0.5)),
        dict(lr_pixels=0.0),
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(DfqError):
        SynthConfig(**bad)


def test_shipped_recipes_load_and_cli_overrides_win():
    cfg = synth_config(None, tiny_config(), {"iters": 3, "param": "pixels", "seed": None})
    assert default_recipe(tiny_config()) == "cifar"
    assert cfg.iters == 3 and cfg.param == "pixels" and cfg.num_images == 512
    assert synth_config("imagenet", tiny_config()).batch_size > 0


def test_unknown_recipe_key_suggests(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("synth:\n  itres: 5\n")
    with pytest.raises(DfqError, match="did you mean 'iters'"):
        synth_config(path, tiny_config())
