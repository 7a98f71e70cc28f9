"""data/subsets.py: the split checks the dataset modules share."""

from __future__ import annotations

import pytest

from dycon_monai.data.isles22_layout import DataError, MissingFileError
from dycon_monai.data.subsets import check_disjoint, keep_present


def test_check_disjoint_names_the_parts_and_cases():
    check_disjoint({"train": ["a", "b"], "val": ["c"], "test": ["d"]})
    with pytest.raises(DataError, match=r"cases in both the val and the test split: \['c'\]"):
        check_disjoint({"train": ["a"], "val": ["c"], "test": ["c", "d"]})


def test_keep_present_raises_keeps_or_names_the_missing_cases(tmp_path):
    split = {"train": ["a", "b", "x"], "test": ["c", "y"]}
    with pytest.raises(
        MissingFileError, match=r"2 case\(s\) of the split file are not in .*\['x', 'y'\].*allow_missing"
    ):
        keep_present(split, {"a", "b", "c"}, tmp_path, "split file", "<case>/image.nii.gz")
    with pytest.raises(MissingFileError) as info:  # a dataset without the option: the error does not suggest it
        keep_present(split, {"a", "b", "c"}, tmp_path, "split file", "<case>/image.nii.gz", allow_missing=None)
    assert "allow_missing" not in str(info.value)
    kept, missing = keep_present(split, {"a", "b", "c"}, tmp_path, "split file", "-", allow_missing=True)
    assert kept == {"train": ["a", "b"], "test": ["c"]} and missing == ["x", "y"]
    assert keep_present(split, set("abcxy"), tmp_path, "split file", "-") == (split, [])
