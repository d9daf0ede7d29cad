"""Instance masks as a data channel: label sets, remapping, the mapping file, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.instances import MAX_LABELS, instance_labels, read_instance_mapping
from recon.errors import DataError


def _png(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint16 if ids.max() > 255 else np.uint8)).save(path)
    return path


def test_labels_from_masks_are_contiguous_with_background_zero(tmp_path):
    a = _png(tmp_path / "segs" / "a.png", np.array([[0, 5], [9, 5]]))
    b = _png(tmp_path / "segs" / "b.png", np.array([[1000, 5], [5, 5]]))  # 16-bit ids
    labels = instance_labels([a, b])
    assert labels.raw_ids == (0, 5, 9, 1000) and labels.num_labels == 4
    assert labels.remap(np.array([[1000, 0], [9, 5]]), b).tolist() == [[3, 0], [2, 1]]
    assert labels.name(0) == "background" and labels.name(3) == "object_1000"
    # the background is label 0 even where no pixel is background
    only = instance_labels([_png(tmp_path / "o.png", np.array([[3, 4]]))])
    assert only.raw_ids == (0, 3, 4)
    with pytest.raises(DataError, match="instance id 7 was not in the training masks"):
        labels.remap(np.array([[7]]), tmp_path / "x.png")


def test_mapping_file_merges_ids_and_names_classes(tmp_path):
    (tmp_path / "segs").mkdir()
    (tmp_path / "instance_mapping.txt").write_text("# raw,class,merged\n0,0,0\n11,1,0\n12,5,3005\n13,5,3005\n14,7,7001\n")
    mask = _png(tmp_path / "segs" / "0_segs.png", np.array([[11, 12], [13, 14]]))
    labels = instance_labels([mask])
    assert labels.raw_ids == (0, 3005, 7001) and labels.source.endswith("instance_mapping.txt")
    assert labels.remap(np.array([[11, 12], [13, 14]]), mask).tolist() == [[0, 1], [1, 2]]  # 11 is merged into the background
    assert labels.name(1) == "object_3005_class5"
    with pytest.raises(DataError, match="instance id 99 is not in instance_mapping.txt"):
        labels.remap(np.array([[99]]), mask)


@pytest.mark.parametrize("text, message", [
    ("1,2\n", "line 1 is not 'raw_id,semantic_class,merged_instance_id'"),
    ("1,2,3\n1,2,4\n", "raw id 1 is mapped twice"),
    ("\n# nothing\n", "has no entries"),
    ("-1,0,0\n", "ids must be non-negative"),
])
def test_bad_mapping_file_is_one_line_error(tmp_path, text, message):
    path = tmp_path / "instance_mapping.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        read_instance_mapping(path)
    assert "\n" not in str(err.value) and "instance_mapping.txt" in str(err.value)


def test_an_image_given_as_mask_is_refused(tmp_path):
    noise = np.random.default_rng(0).integers(0, 60000, (32, 32))
    with pytest.raises(DataError, match=f"more than {MAX_LABELS} distinct instance ids"):
        instance_labels([_png(tmp_path / "depth.png", noise)])
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="single-channel"):
        instance_labels([rgb])

