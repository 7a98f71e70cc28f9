"""The ISLES'22 layout module: paths of a case, the bundles' quick dataset check."""

from __future__ import annotations

from pathlib import Path

import pytest

from dycon_monai.data import DatasetNotFoundError, check_dataset, scan_isles22
from dycon_monai.data.isles22_layout import case_id, case_paths


def test_check_dataset_message_names_layout_and_demo(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset(tmp_path / "missing")
    text = str(err.value)
    assert "does not exist" in text and "rawdata/sub-strokecase0001/ses-0001/dwi" in text
    assert "derivatives/" in text and "make demo" in text and "--dataset_dir" in text
    (tmp_path / "rawdata").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no DWI images"):
        check_dataset(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="no dataset_dir was given"):
        check_dataset(None)


def test_check_dataset_accepts_cohort(synthetic_cohort):
    assert check_dataset(synthetic_cohort) == str(Path(synthetic_cohort).absolute())


def test_case_paths_are_what_the_scanner_finds(synthetic_cohort):
    cases = scan_isles22(synthetic_cohort)
    cid = case_id(1)
    paths = case_paths(synthetic_cohort, cid)
    assert cases[cid].images["dwi"] == paths["dwi"] and cases[cid].images["adc"] == paths["adc"]
    assert cases[cid].label == paths["label"]
    assert (
        paths["flair"]
        == Path(synthetic_cohort) / "rawdata" / cid / "ses-0001" / "anat" / f"{cid}_ses-0001_FLAIR.nii.gz"
    )
