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


def test_layout_text_and_messages_are_unchanged(tmp_path):
    from dycon_monai.data.isles22_layout import LAYOUT

    assert LAYOUT == (
        "  <dataset_dir>/rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz"
        "   (+ _adc, anat/_FLAIR)\n"
        "  <dataset_dir>/derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz"
    )
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset(tmp_path, demo_command="make mini")
    assert str(err.value) == (
        f"No readable ISLES'22 dataset: dataset_dir '{tmp_path}' has no rawdata/ folder.\n"
        f"Expected the layout of the ISLES'22 release:\n{LAYOUT}\n"
        "Pass its root with --dataset_dir DIR. To try the bundle without ISLES'22, run "
        "`make mini` (it builds a synthetic cohort in this layout, trains on it and evaluates)."
    )
    dwi = case_paths(tmp_path, case_id(1))["dwi"]
    dwi.parent.mkdir(parents=True)
    dwi.write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset(tmp_path)
    assert f"dataset_dir '{tmp_path}' has no lesion masks (*_msk.nii.gz) under derivatives/sub-*/ses-*/." in str(
        err.value
    )
    with pytest.raises(FileNotFoundError) as err:
        scan_isles22(tmp_path / "none")
    assert str(err.value) == (
        f"{tmp_path / 'none'} is not an ISLES'22 root: no 'rawdata' folder. Expected "
        "ROOT/rawdata/sub-strokecaseXXXX/ses-0001/dwi/sub-strokecaseXXXX_ses-0001_dwi.nii.gz and "
        "ROOT/derivatives/sub-strokecaseXXXX/ses-0001/sub-strokecaseXXXX_ses-0001_msk.nii.gz "
        "(make a synthetic one with: python -m dycon_monai.data.synthetic --out DIR)"
    )


def test_case_folders_and_holds_dataset(tmp_path, synthetic_cohort):
    from dycon_monai.data.isles22_layout import case_folders, holds_dataset

    assert [p.name for p in case_folders(synthetic_cohort)] == [case_id(i) for i in range(1, 13)]
    assert holds_dataset(synthetic_cohort) and not holds_dataset(tmp_path) and case_folders(tmp_path) == []
    (tmp_path / "rawdata" / "notes").mkdir(parents=True)
    assert holds_dataset(tmp_path) and case_folders(tmp_path) == []
