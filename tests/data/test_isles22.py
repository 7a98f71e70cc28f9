from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dycon_monai.data.isles22 import isles22_datalist, load_datalist, main, published_splits, save_datalist
from dycon_monai.data.isles22_layout import DataError, MissingFileError, scan_isles22

SES = "ses-0001"


def _dwi(root: Path, cid: str, suffix: str = "dwi", ext: str = ".nii.gz") -> Path:
    folder = "anat" if suffix == "FLAIR" else "dwi"
    return root / "rawdata" / cid / SES / folder / f"{cid}_{SES}_{suffix}{ext}"


def _msk(root: Path, cid: str) -> Path:
    return root / "derivatives" / cid / SES / f"{cid}_{SES}_msk.nii.gz"


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def cohort(synthetic_cohort, tmp_path) -> Path:
    """A private copy of the session cohort, for tests that break files."""
    return Path(shutil.copytree(synthetic_cohort, tmp_path / "cohort"))


def _facts(root: Path) -> dict:
    return {f["case_id"]: f for f in json.loads((root / "synthetic_cohort.json").read_text())["case_facts"]}


# ------------------------------------------------------------------------------------------------------------
# datalists and splits


def test_datalist_structure(synthetic_cohort):
    d = isles22_datalist(synthetic_cohort, fold=0, labeled_fraction=0.2, seed=0)
    c = d["meta"]["counts"]
    assert d["meta"]["split_source"] == "generated"
    assert c == {"training_labeled": 2, "training_unlabeled": 8, "validation": 1, "test": 1}
    for e in d["training_unlabeled"]:
        assert set(e) == {"image", "case_id"}  # no label, nothing derived from it
    for key in ("training_labeled", "validation", "test"):
        for e in d[key]:
            assert set(e) == {"image", "label", "case_id", "lesion_free"}
            assert Path(e["label"]).is_file() and Path(e["image"]).is_absolute()
    ids = [e["case_id"] for k in ("training_labeled", "training_unlabeled", "validation", "test") for e in d[k]]
    assert len(ids) == len(set(ids)) == 12
    # deterministic; the seed changes the labeled subset or the folds
    assert isles22_datalist(synthetic_cohort, fold=0, labeled_fraction=0.2, seed=0) == d
    others = [isles22_datalist(synthetic_cohort, fold=0, labeled_fraction=0.2, seed=s) for s in (1, 2, 3)]
    assert any(o["training_labeled"] != d["training_labeled"] for o in others)
    # folds differ from each other
    f1 = isles22_datalist(synthetic_cohort, fold=1, labeled_fraction=0.2, seed=0)
    assert (f1["validation"], f1["test"]) != (d["validation"], d["test"])


def test_multimodal_image_is_a_list(synthetic_cohort):
    d = isles22_datalist(synthetic_cohort, labeled_count=1, modalities=("dwi", "adc"))
    img = d["training_unlabeled"][0]["image"]
    assert isinstance(img, list) and len(img) == 2 and img[0].endswith("_dwi.nii.gz") and img[1].endswith("_adc.nii.gz")
    with pytest.raises(MissingFileError, match="no flair image"):
        isles22_datalist(synthetic_cohort, labeled_count=1, modalities="dwi,flair")
    with pytest.raises(ValueError, match="modalities"):
        isles22_datalist(synthetic_cohort, labeled_count=1, modalities=("t1",))


def test_lesion_free_cases_kept_and_flagged(synthetic_cohort):
    facts = _facts(synthetic_cohort)
    d = isles22_datalist(synthetic_cohort, labeled_count=10)  # every training case labeled
    entries = {e["case_id"]: e for k in ("training_labeled", "validation", "test") for e in d[k]}
    assert len(entries) == 12
    for cid, e in entries.items():
        assert e["lesion_free"] == facts[cid]["lesion_free"]
    assert sum(e["lesion_free"] for e in entries.values()) == 1


def test_labeled_subset_is_stratified_by_volume(synthetic_cohort):
    facts = _facts(synthetic_cohort)
    d = isles22_datalist(synthetic_cohort, labeled_count=2, seed=0)
    train = sorted(
        [e["case_id"] for e in d["training_labeled"] + d["training_unlabeled"]], key=lambda c: (facts[c]["volume"], c)
    )
    lab = [train.index(e["case_id"]) for e in d["training_labeled"]]
    assert min(lab) < 5 <= max(lab)  # one from the smaller half, one from the larger half


def test_empty_labeled_set_is_an_error(synthetic_cohort):
    with pytest.raises(DataError, match=r"rounds to 0 labeled cases.*labeled_count=1"):
        isles22_datalist(synthetic_cohort, labeled_fraction=0.01)
    with pytest.raises(DataError, match=r"labeled_fraction must be in \(0, 1\]"):
        isles22_datalist(synthetic_cohort, labeled_fraction=0.0)
    with pytest.raises(DataError, match=r"labeled_count=0 is impossible with 10 training cases"):
        isles22_datalist(synthetic_cohort, labeled_count=0)
    with pytest.raises(DataError, match="labeled_count=11"):
        isles22_datalist(synthetic_cohort, labeled_count=11)


def test_published_folds_used_when_all_ids_present(tmp_path):
    """A root with the 250 published ids (tiny files) gets the published folds and per-case volumes."""
    pub = published_splits(0)
    vol = {r["case_id"]: r["volume"] for r in pub["metrics"]}
    img = np.ones((4, 4, 4), np.float32)
    for cid in vol:
        _write(_dwi(tmp_path, cid, ext=".nii"), img)
        m = np.zeros((4, 4, 4), np.uint8)
        m[0, 0, 0] = vol[cid] > 0
        _write(_msk(tmp_path, cid).with_suffix(""), m)
    d = isles22_datalist(tmp_path, fold=0, labeled_fraction=0.1, seed=0)
    assert d["meta"]["split_source"] == "published"
    assert [e["case_id"] for e in d["validation"]] == sorted(pub["val"])
    assert [e["case_id"] for e in d["test"]] == sorted(pub["test"])
    labeled = [e["case_id"] for e in d["training_labeled"]]
    assert len(labeled) == 20 and len(d["training_unlabeled"]) == 180 and set(labeled) <= set(pub["train"])
    # stratified by the published volumes: one case per volume decile of the training set
    order = sorted(pub["train"], key=lambda c: (vol[c], c))
    strata = sorted(order.index(c) // 10 for c in labeled)
    assert strata == list(range(20))
    # the lesion-free published cases are flagged where they are exposed
    for e in d["validation"] + d["test"] + d["training_labeled"]:
        assert e["lesion_free"] == (vol[e["case_id"]] == 0)
    # a missing published case falls back to generated folds, or is an error if published is forced
    shutil.rmtree(tmp_path / "rawdata" / pub["val"][0])
    shutil.rmtree(tmp_path / "derivatives" / pub["val"][0])
    assert isles22_datalist(tmp_path, labeled_count=2)["meta"]["split_source"] == "generated"
    with pytest.raises(MissingFileError, match=pub["val"][0]):
        isles22_datalist(tmp_path, labeled_count=2, splits="published")


def test_cli_writes_datalist_atomically(synthetic_cohort, tmp_path, capsys):
    out = tmp_path / "sub" / "datalist.json"
    rc = main(["--root", str(synthetic_cohort), "--fold", "0", "--labeled-fraction", "0.2", "--out", str(out)])
    assert rc == 0 and "2 labeled, 8 unlabeled, 1 validation, 1 test" in capsys.readouterr().out
    d = load_datalist(out)
    assert d == json.loads(json.dumps(isles22_datalist(synthetic_cohort, labeled_fraction=0.2)))
    assert [p.name for p in out.parent.iterdir()] == ["datalist.json"]  # no temporary left behind
    rc = main(
        [
            "--root",
            str(synthetic_cohort),
            "--labeled-count",
            "3",
            "--seed",
            "1",
            "--modalities",
            "dwi",
            "adc",
            "--out",
            str(out),
        ]
    )
    d3 = load_datalist(out)
    assert rc == 0 and len(d3["training_labeled"]) == 3 and d3["meta"]["modalities"] == ["dwi", "adc"]
    assert main(["--root", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no 'rawdata' folder" in capsys.readouterr().err


def test_save_datalist_roundtrip_and_leak_guard(tmp_path):
    p = save_datalist(
        {"training_labeled": [], "training_unlabeled": [], "validation": [], "test": []}, tmp_path / "d.json"
    )
    assert load_datalist(p)["test"] == []
    save_datalist(
        {"training_labeled": [], "training_unlabeled": [{"image": "a", "label": "b"}], "validation": [], "test": []}, p
    )
    with pytest.raises(DataError, match="must not have a 'label' key"):
        load_datalist(p)


def test_unlabeled_masks_not_read_without_stratification(cohort):
    d = isles22_datalist(cohort, labeled_count=2, stratify=False)
    for e in d["training_unlabeled"]:
        _msk(cohort, e["case_id"]).write_bytes(b"garbage")  # unreadable
    assert isles22_datalist(cohort, labeled_count=2, stratify=False) == d


# ------------------------------------------------------------------------------------------------------------
# bad inputs: each error names the case / file and what was expected


def test_missing_root_names_expected_layout(tmp_path):
    with pytest.raises(MissingFileError, match=r"no 'rawdata' folder.*sub-strokecaseXXXX_ses-0001_dwi.nii.gz"):
        scan_isles22(tmp_path)


def test_missing_mask_of_a_case_that_must_be_labeled(cohort):
    d = isles22_datalist(cohort, labeled_count=2)
    cid = d["validation"][0]["case_id"]
    _msk(cohort, cid).unlink()
    with pytest.raises(
        MissingFileError, match=rf"case {cid} must be labeled but has no mask: expected .*{cid}_ses-0001_msk"
    ):
        isles22_datalist(cohort, labeled_count=2)


def test_missing_dwi(cohort):
    _dwi(cohort, "sub-strokecase0004").unlink()
    with pytest.raises(MissingFileError, match=r"case sub-strokecase0004 has no dwi image: expected .*_dwi.nii.gz"):
        isles22_datalist(cohort, labeled_count=2)


def test_truncated_nifti(cohort):
    p = _dwi(cohort, "sub-strokecase0005")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(DataError, match=r"unreadable dwi of case sub-strokecase0005: .*_dwi.nii.gz is truncated") as e:
        isles22_datalist(cohort, labeled_count=2)
    assert e.value.case_id == "sub-strokecase0005" and e.value.path == str(p)


def test_unreadable_nifti(cohort):
    p = _dwi(cohort, "sub-strokecase0006", "adc")
    p.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(DataError, match=r"unreadable adc of case sub-strokecase0006: .*_adc.nii.gz"):
        isles22_datalist(cohort, labeled_count=2, modalities=("dwi", "adc"))
    isles22_datalist(cohort, labeled_count=2)  # the ADC is not used with DWI only


def test_truncated_uncompressed_nifti(tmp_path):
    for i in range(1, 4):
        cid = f"sub-strokecase{i:04d}"
        _write(_dwi(tmp_path, cid, ext=".nii"), np.ones((8, 8, 8), np.float32))
        _write(_msk(tmp_path, cid), np.zeros((8, 8, 8), np.uint8))
    p = _dwi(tmp_path, "sub-strokecase0002", ext=".nii")
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"sub-strokecase0002.*truncated.*1000 bytes, the header needs 2400"):
        isles22_datalist(tmp_path, labeled_count=1)


def test_shape_mismatch(cohort):
    cid = "sub-strokecase0007"
    dwi = nib.load(_dwi(cohort, cid))
    _write(_msk(cohort, cid), np.zeros((10, 10, 10), np.uint8), dwi.affine)
    with pytest.raises(
        DataError, match=rf"mask of case {cid} has shape \(10, 10, 10\) .* but the DWI has {re.escape(str(dwi.shape))}"
    ):
        isles22_datalist(cohort, labeled_count=10)


def test_affine_mismatch_beyond_tolerance(cohort):
    cid = "sub-strokecase0008"
    dwi = nib.load(_dwi(cohort, cid))
    shifted = dwi.affine.copy()
    shifted[0, 3] += 3.0  # 3 mm
    _write(_msk(cohort, cid), np.asarray(nib.load(_msk(cohort, cid)).dataobj), shifted)
    with pytest.raises(
        DataError,
        match=rf"mask of case {cid} .* differs from the DWI's .* by 3 \(max absolute difference > tolerance 0.001\)",
    ):
        isles22_datalist(cohort, labeled_count=10)
    isles22_datalist(cohort, labeled_count=10, affine_tolerance=5.0)  # within a looser tolerance


def test_label_values_outside_binary_and_mapping(cohort):
    cid = "sub-strokecase0009"
    img = nib.load(_msk(cohort, cid))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0], data[0, 0, 1] = 2, 4
    _write(_msk(cohort, cid), data, img.affine)
    with pytest.raises(
        DataError, match=rf"mask of case {cid} .* has label values \[0, 1, 2, 4\]; expected \{{0, 1\}}.*label_mapping"
    ):
        isles22_datalist(cohort, labeled_count=10)
    d = isles22_datalist(cohort, labeled_count=10, label_mapping="brats_whole_tumor")
    assert d["meta"]["label_mapping"] == {"0": 0, "1": 1, "2": 1, "4": 1}
    with pytest.raises(DataError, match=r"label_mapping covers only \[0, 1, 2\]"):
        isles22_datalist(cohort, labeled_count=10, label_mapping={0: 0, 1: 1, 2: 1})
    with pytest.raises(ValueError, match="unknown label_mapping"):
        isles22_datalist(cohort, labeled_count=10, label_mapping="brats")


def test_duplicate_files(cohort):
    cid = "sub-strokecase0002"
    shutil.copy(_dwi(cohort, cid), _dwi(cohort, cid, ext=".nii"))
    with pytest.raises(DataError, match=rf"duplicate dwi images for case {cid}: .*_dwi.nii"):
        scan_isles22(cohort)


def test_duplicate_masks(cohort):
    cid = "sub-strokecase0002"
    shutil.copy(_msk(cohort, cid), _msk(cohort, cid).with_suffix(""))
    with pytest.raises(DataError, match=rf"duplicate masks for case {cid}"):
        scan_isles22(cohort)


@pytest.mark.parametrize(
    "stray, message",
    [
        (
            "rawdata/sub-strokecase0003/ses-0001/dwi/sub-strokecase0003_ses-0001_dwi_copy.nii.gz",
            "stray image .*expected one of",
        ),
        (
            "rawdata/sub-strokecase0003/ses-0001/dwi/sub-strokecase0004_ses-0001_dwi.nii.gz",
            "stray image .*case sub-strokecase0003",
        ),
        ("rawdata/sub-strokecase0003/ses-0001/anat/sub-strokecase0003_ses-0001_dwi.nii.gz", "wrong folder"),
        ("rawdata/stray.nii.gz", "stray image .*not in rawdata/"),
        ("rawdata/sub-strokecase03/ses-0001/dwi/x.nii.gz", "stray folder .*sub-strokecaseXXXX"),
        ("rawdata/sub-strokecase0003/ses-0002/dwi/sub-strokecase0003_ses-0002_dwi.nii.gz", "2 sessions"),
        (
            "derivatives/sub-strokecase0099/ses-0001/sub-strokecase0099_ses-0001_msk.nii.gz",
            "stray mask folder .*sub-strokecase0099 has no images",
        ),
        ("derivatives/sub-strokecase0003/ses-0001/extra_msk.nii.gz", "stray image .*masks of case sub-strokecase0003"),
    ],
)
def test_stray_files_and_folders(cohort, stray, message):
    path = cohort / stray
    _write(path, np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(DataError, match=message) as e:
        scan_isles22(cohort)
    assert e.value.path is not None


def test_sidecars_and_hidden_files_are_ignored(cohort):
    (cohort / "rawdata" / "participants.tsv").write_text("participant_id\n")
    (_dwi(cohort, "sub-strokecase0001").parent / "sub-strokecase0001_ses-0001_dwi.json").write_text("{}")
    (_dwi(cohort, "sub-strokecase0001").parent / ".DS_Store").write_bytes(b"\0")
    assert len(scan_isles22(cohort)) == 12
