"""Pancreas-CT: release-layout scanner, published split without the withdrawn duplicates, DICOM series checks,
label alignment by geometry, transform chains, synthetic stand-in."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from dycon_monai.data.dicom import CheckDicomSeriesd, dicom_files, inspect_dicom_series
from dycon_monai.data.isles22_layout import DataError, MissingFileError
from dycon_monai.data.pancreas import (
    PANCREAS_DUPLICATES,
    pancreas_datalist,
    pancreas_inference_datalist,
    pancreas_published_split,
    scan_pancreas,
)
from dycon_monai.data.pancreas_transforms import (
    pancreas_inference_transforms,
    pancreas_label_loader,
    pancreas_train_transforms,
)
from dycon_monai.data.synthetic_pancreas import (
    LABEL_FOLDER,
    make_synthetic_pancreas,
    synthesize_pancreas_case,
    write_dicom_series,
)

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_synthetic_pancreas(tmp_path_factory.mktemp("pancreas"), n_train=4, n_test=2, shape=SHAPE, seed=0)


def _copy(cohort: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cohort, tmp_path / "copy"))


def _chain(info: pytest.ExceptionInfo) -> str:
    """Every message of the exception and its causes (MONAI's Compose wraps a transform's error)."""
    out, err = [], info.value
    while err is not None:
        out.append(str(err))
        err = err.__cause__
    return "\n".join(out)


def _split(root: Path) -> Path:
    return root / "split.json"


def test_published_split_drops_the_withdrawn_duplicates():
    split = pancreas_published_split()
    assert len(split["train"]) == 62 and len(split["test"]) == 20
    assert "PANCREAS_0025" in split["train"] and "PANCREAS_0070" in split["test"]
    assert set(PANCREAS_DUPLICATES) == {"PANCREAS_0025", "PANCREAS_0070"}
    assert all(c.startswith("PANCREAS_") and len(c) == 13 for c in split["train"] + split["test"])


def test_datalist_subsets_and_unlabeled_without_label(cohort):
    dl = pancreas_datalist(cohort, labeled_count=2, split_file=_split(cohort), seed=1, check_data=True)
    assert len(dl["training_labeled"]) == 2 and len(dl["training_unlabeled"]) == 2 and len(dl["test"]) == 2
    assert all("label" not in e for e in dl["training_unlabeled"])
    assert all(Path(e["label"]).name.startswith("label") for e in dl["training_labeled"] + dl["test"])
    assert all(dicom_files(e["image"]) for e in dl["training_labeled"] + dl["test"])
    assert dl["validation"] == [] and dl["meta"]["n_train"] == 4 and dl["meta"]["dropped"] == []
    other = pancreas_datalist(cohort, labeled_count=2, split_file=_split(cohort), seed=2)
    ids = sorted(e["case_id"] for e in dl["training_labeled"])
    assert len({tuple(ids), tuple(sorted(e["case_id"] for e in other["training_labeled"]))}) >= 1
    with pytest.raises(DataError, match="impossible with 4 training cases"):
        pancreas_datalist(cohort, labeled_count=5, split_file=_split(cohort))


def test_duplicates_are_dropped_from_a_split_and_a_folder_that_has_them(cohort, tmp_path):
    root = _copy(cohort, tmp_path)
    split = json.loads(_split(root).read_text())
    src = root / "Pancreas-CT" / split["train"][0]
    shutil.copytree(src, root / "Pancreas-CT" / "PANCREAS_0025")  # an old download still has the duplicate
    shutil.copy(root / LABEL_FOLDER / f"label{split['train'][0][-4:]}.nii.gz", root / LABEL_FOLDER / "label0025.nii.gz")
    _split(root).write_text(json.dumps({"train": split["train"] + ["PANCREAS_0025"], "test": split["test"]}))
    dl = pancreas_datalist(root, labeled_count="all", split_file=_split(root))
    assert dl["meta"]["dropped"] == ["PANCREAS_0025"]
    assert "PANCREAS_0025" not in [e["case_id"] for e in dl["training_labeled"]]
    kept = pancreas_datalist(root, labeled_count="all", split_file=_split(root), drop_cases=[])
    assert "PANCREAS_0025" in [e["case_id"] for e in kept["training_labeled"]]


def test_root_without_release_names_the_expected_layout(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        pancreas_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match=r"Pancreas-CT/PANCREAS_NNNN/<study>/<series>/\*\.dcm"):
        scan_pancreas(tmp_path / "empty")


def test_missing_cases_and_labels_are_named(cohort, tmp_path):
    with pytest.raises(MissingFileError, match=r"case\(s\) of the published Pancreas-NIH split are not in"):
        pancreas_datalist(cohort)  # the stand-in has only 6 of the published cases
    present = pancreas_datalist(cohort, allow_missing=True, labeled_count=2)
    assert present["meta"]["n_train"] == 4 and len(present["meta"]["missing"]) == 61 + 19 - 6
    root = _copy(cohort, tmp_path)
    split = json.loads(_split(root).read_text())
    (root / LABEL_FOLDER / f"label{split['test'][0][-4:]}.nii.gz").unlink()
    with pytest.raises(MissingFileError, match=rf"no labelNNNN.nii.gz under .*\['{split['test'][0]}'\]"):
        pancreas_datalist(root, labeled_count=2, split_file=_split(root))
    _split(root).write_text(json.dumps({"train": split["train"] + ["PANCREAS_0099"], "test": split["test"]}))
    with pytest.raises(MissingFileError, match=r"PANCREAS_0099"):
        pancreas_datalist(root, labeled_count=2, split_file=_split(root))


def test_case_without_or_with_two_series_is_refused(cohort, tmp_path):
    root = _copy(cohort, tmp_path)
    case = sorted((root / "Pancreas-CT").iterdir())[0]
    series = next(p for p in case.rglob("*") if p.is_dir() and dicom_files(p))
    shutil.copytree(series, series.parent / "second_series")
    with pytest.raises(DataError, match=rf"case {case.name} has 2 DICOM series folders"):
        scan_pancreas(root)
    shutil.rmtree(series.parent)
    with pytest.raises(MissingFileError, match=rf"case {case.name}: no \*\.dcm file"):
        scan_pancreas(root)


def _vol(rng_seed: int = 0) -> np.ndarray:
    return synthesize_pancreas_case(np.random.default_rng(rng_seed), (16, 16, 8))[0]


def test_series_with_a_gap_is_refused(tmp_path, cohort):
    write_dicom_series(tmp_path / "gap", _vol(), spacing=(1.0, 1.0, 2.0), skip_slices=[4])
    with pytest.raises(DataError, match=r"has a gap: 4\.000 mm between 1-004\.dcm .* and 1-006\.dcm .* step is 2\.000"):
        inspect_dicom_series(tmp_path / "gap")
    with pytest.raises(DataError, match=r"case PANCREAS_X image: DICOM series .* has a gap"):
        CheckDicomSeriesd(keys="image")({"case_id": "PANCREAS_X", "image": str(tmp_path / "gap")})
    # at load time, in the training chain, before the series is read
    with pytest.raises(Exception) as info:
        pancreas_inference_transforms()({"case_id": "PANCREAS_X", "image": str(tmp_path / "gap")})
    assert "case PANCREAS_X image: DICOM series" in _chain(info) and "has a gap" in _chain(info)
    info = inspect_dicom_series(next(p for p in cohort.rglob("*") if p.is_dir() and dicom_files(p)))
    assert info.slice_step_mm == pytest.approx(2.0) and len(info.files) == SHAPE[2]
    assert (info.rows, info.columns) == (SHAPE[1], SHAPE[0])


def test_series_with_mixed_orientation_is_refused(tmp_path):
    odd = {2: ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0))}
    write_dicom_series(tmp_path / "mixed", _vol(), odd_slice_directions=odd)
    with pytest.raises(DataError, match=r"mixes orientations: 1-003\.dcm has direction cosines .* but 1-001\.dcm"):
        inspect_dicom_series(tmp_path / "mixed")


def test_two_files_at_one_position_and_too_few_slices(tmp_path):
    files = write_dicom_series(tmp_path / "dup", _vol())
    shutil.copy(files[3], tmp_path / "dup" / "1-099.dcm")
    with pytest.raises(DataError, match="lie at the same position"):
        inspect_dicom_series(tmp_path / "dup")
    (tmp_path / "none").mkdir()
    with pytest.raises(MissingFileError, match=r"holds 0 \*\.dcm file"):
        inspect_dicom_series(tmp_path / "none")


def _case(root: Path, which: str = "test") -> dict:
    dl = pancreas_datalist(root, labeled_count=2, split_file=_split(root), seed=0)
    return dl[which][0]


def test_label_in_another_voxel_order_is_aligned_by_geometry(cohort):
    """The stand-in's labels are stored flipped in-plane; by their affines they land exactly on the series."""
    e = _case(cohort)
    stored = np.asarray(nib.load(e["label"]).dataobj)
    hu, lab = synthesize_pancreas_case(np.random.default_rng([0, zlib.crc32(e["case_id"].encode())]), SHAPE)
    assert not np.array_equal(stored, lab)  # another voxel order on disk
    img = LoadImage(reader="ITKReader", image_only=True)(e["image"])
    np.testing.assert_array_equal(np.asarray(img), hu)
    out = pancreas_label_loader("label", ref_key="pred")({"label": e["label"], "pred": img[None]})
    np.testing.assert_array_equal(np.asarray(out["label"][0]), lab)
    # the training chain sees the same alignment: every labeled voxel is pancreas-bright
    d = pancreas_train_transforms(patch_size=(24, 24, 24), labeled=True, augment=False)(e)
    d = d[0] if isinstance(d, list) else d
    inside = d["image"][d["label"] > 0]
    assert inside.numel() > 0 and float(inside.mean()) > 0.45  # (HU 95..120 + 120) / 360 ~ 0.6, blurred edges


def test_label_values_outside_0_1_are_refused(cohort, tmp_path):
    root = _copy(cohort, tmp_path)
    e = _case(root)
    img = nib.load(e["label"])
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(data, img.affine), e["label"])
    with pytest.raises(DataError, match=r"holds values \[0, 1, 2\]; expected 0 \(background\) and 1 \(pancreas\)"):
        pancreas_datalist(root, labeled_count=2, split_file=_split(root), check_data=True)
    with pytest.raises(Exception) as info:
        pancreas_train_transforms(patch_size=(16, 16, 16), labeled=True)(e)
    assert "[0, 1, 2]" in _chain(info) and e["case_id"] in _chain(info)


def test_label_on_another_grid_is_refused(cohort, tmp_path):
    root = _copy(cohort, tmp_path)
    e = _case(root)
    img = nib.load(e["label"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-2].copy(), img.affine), e["label"])
    with pytest.raises(DataError, match="expected a label of the same grid"):
        pancreas_datalist(root, labeled_count=2, split_file=_split(root), check_data=True)
    with pytest.raises(Exception) as info:
        pancreas_train_transforms(patch_size=(16, 16, 16), labeled=True)(e)
    assert "expected the same grid" in _chain(info) and e["case_id"] in _chain(info)


def test_transforms_window_crops_and_options(cohort):
    e = _case(cohort, "training_labeled")
    patch = (16, 16, 16)
    pos_neg = pancreas_train_transforms(patch_size=patch, labeled=True)
    margin = pancreas_train_transforms(patch_size=patch, labeled=True, labeled_crop="label_margin")
    for chain in (pos_neg, margin):
        chain.set_random_state(0)
        out = chain(e)
        out = out[0] if isinstance(out, list) else out
        assert out["image"].shape == out["label"].shape == (1, *patch)
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
        assert out["image"].dtype == torch.float32
    unlabeled = pancreas_train_transforms(patch_size=patch, labeled=False)
    out = unlabeled({"case_id": e["case_id"], "image": e["image"], "label": "/no/such/file.nii.gz"})
    assert "image" in out and isinstance(out["label"], str)  # an unlabeled chain never reads a label
    whole = pancreas_inference_transforms()({"image": e["image"]})["image"]
    assert whole.shape[3] == 2 * SHAPE[2] - 1  # 2 mm slices resampled to 1 mm
    assert whole.shape[1] < SHAPE[0] and whole.shape[2] < SHAPE[1]  # the air around the body is cropped
    with pytest.raises(ValueError, match="labeled_crop must be one of"):
        pancreas_train_transforms(labeled_crop="gt")
    with pytest.raises(ValueError, match="hu_window must be"):
        pancreas_train_transforms(hu_window=(240, -120))


def test_inference_datalist_finds_series_and_case_ids(cohort, tmp_path):
    found = pancreas_inference_datalist(cohort / "Pancreas-CT")
    split = json.loads(_split(cohort).read_text())
    assert sorted(e["case_id"] for e in found) == sorted(split["train"] + split["test"])
    series = found[0]["image"]
    assert pancreas_inference_datalist(series)[0]["image"] == str(Path(series).absolute())
    with pytest.raises(MissingFileError, match="no DICOM series"):
        pancreas_inference_datalist(tmp_path)


def test_synthetic_cli_writes_the_release_layout(tmp_path):
    from dycon_monai.data.synthetic_pancreas import main

    main([str(tmp_path / "c"), "--n_train", "1", "--n_test", "1"])
    split = json.loads((tmp_path / "c" / "split.json").read_text())
    assert len(split["train"]) == 1 and not set(split["train"] + split["test"]) & set(PANCREAS_DUPLICATES)
    assert list((tmp_path / "c" / LABEL_FOLDER).glob("label*.nii.gz"))


def test_writing_a_series_leaves_the_process_locale_alone(tmp_path):
    """GDCM's writer switches to the C locale; left so, later text reads (e.g. torch.compile's) break."""
    import locale

    before = locale.setlocale(locale.LC_ALL)
    write_dicom_series(tmp_path / "s", _vol())
    assert locale.setlocale(locale.LC_ALL) == before
