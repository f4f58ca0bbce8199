import json

import numpy as np
import pytest
import torch

from dfq.calibration import CalibrationSet, load_calibration, save_calibration
from dfq.calibration.formats import atomic_path
from dfq.data import load_images
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

DATA = DataConfig(input_size=(3, 8, 8), num_classes=3)


def _calib(n=5):
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(n, 3, 8, 8, generator=g)
    mean, std = torch.tensor(DATA.mean).view(1, 3, 1, 1), torch.tensor(DATA.std).view(1, 3, 1, 1)
    return CalibrationSet(
        (pixels - mean) / std,
        torch.arange(n) % 3,
        {"data_config": DATA.to_dict(), "input_name": "images", "seed": 7},
    )


@pytest.mark.parametrize("fmt, name", [("npz", "c.npz"), ("onnx-pb", "c"), ("png", "c")])
def test_each_format_reloads_to_the_same_tensors(tmp_path, fmt, name):
    calib = _calib()
    back = load_calibration(save_calibration(calib, tmp_path / name, fmt))
    assert torch.equal(back.labels, calib.labels)
    assert back.input_name == "images" and back.metadata["seed"] == 7
    if fmt == "png":  # uint8 files: equal to the de-normalized, rounded images
        assert torch.equal(back.pixels_uint8(), calib.pixels_uint8())
        assert (back.images - calib.images).abs().max() < 0.51 / 255 / min(DATA.std) + 1e-5
        side = json.loads((tmp_path / name / "dfq_calibration.json").read_text())
        assert side["mean"] == list(DATA.mean) and side["size"] == [3, 8, 8]
    else:
        assert torch.equal(back.images, calib.images)


def test_npz_is_readable_by_dfq_data_as_normalized_images(tmp_path):
    calib = _calib()
    save_calibration(calib, tmp_path / "c.npz")
    images = load_images(tmp_path / "c.npz", DATA)
    assert images.normalized and torch.equal(images.x, calib.images)
    assert torch.equal(images.y, calib.labels)
    meta = json.loads(str(np.load(tmp_path / "c.npz")["dfq_meta"]))
    assert meta["normalized"] is True and meta["input_name"] == "images"


def test_existing_output_refused_without_overwrite(tmp_path):
    path = save_calibration(_calib(), tmp_path / "c.npz")
    with pytest.raises(DfqError, match="already exists.*--overwrite"):
        save_calibration(_calib(), path)
    save_calibration(_calib(2), path, overwrite=True)
    assert len(load_calibration(path)) == 2
    save_calibration(_calib(2), tmp_path / "d", "png")
    save_calibration(_calib(4), tmp_path / "d", "png", overwrite=True)
    assert len(load_calibration(tmp_path / "d")) == 4


def test_interrupt_leaves_nothing_under_the_final_name(tmp_path):
    final = tmp_path / "c.npz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_bad_file_are_usage_errors(tmp_path):
    with pytest.raises(DfqError, match="unknown calibration format 'tiff'"):
        save_calibration(_calib(), tmp_path / "c", "tiff")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DfqError, match="not a readable"):
        load_calibration(tmp_path / "bad.npz")
