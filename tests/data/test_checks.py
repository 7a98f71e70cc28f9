"""Data integrity: NaN / Inf voxels are errors at datalist check time and at load time; all-zero images warn."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensityd

from dycon_monai.data.checks import (
    AllZeroImageWarning,
    CheckFinited,
    NonFiniteDataError,
    check_finite,
    count_nonfinite,
    is_all_zero,
    warn_if_all_zero,
)
from dycon_monai.data.isles22 import isles22_datalist, main
from dycon_monai.data.isles22_layout import DataError
from dycon_monai.data.transforms import (
    inference_transforms,
    labeled_train_transforms,
    unlabeled_train_transforms,
    validation_transforms,
)
from dycon_monai.evaluation import case_metrics

SES = "ses-0001"
SHAPE = (10, 10, 8)


def _dwi(root: Path, cid: str, suffix: str = "dwi") -> Path:
    return root / "rawdata" / cid / SES / "dwi" / f"{cid}_{SES}_{suffix}.nii.gz"


def _write(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """10 tiny ISLES'22-layout cases (DWI + ADC + mask with one cubic lesion): generated folds 8 / 1 / 1."""
    rng = np.random.default_rng(0)
    for i in range(1, 11):
        cid = f"sub-strokecase{i:04d}"
        head = np.zeros(SHAPE, np.float32)
        head[1:9, 1:9, 1:7] = 1.0
        lesion = np.zeros(SHAPE, np.uint8)
        lesion[3:6, 3:6, 2:5] = 1
        _write(_dwi(tmp_path, cid), head * rng.uniform(0.5, 1.0, SHAPE).astype(np.float32) + 2.0 * lesion)
        _write(_dwi(tmp_path, cid, "adc"), head * rng.uniform(0.5, 1.0, SHAPE).astype(np.float32))
        _write(tmp_path / "derivatives" / cid / SES / f"{cid}_{SES}_msk.nii.gz", lesion)
    return tmp_path


def _entries(root: Path, key: str, **kw) -> list[dict]:
    return isles22_datalist(root, labeled_count=2, **kw)[key]


def _poison(path: Path, value: float, region=(slice(2, 5), slice(2, 5), slice(1, 4))) -> int:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[region] = value
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    return int(data[region].size)


def _causes(exc: BaseException) -> str:
    text = []
    while exc is not None:
        text.append(str(exc))
        exc = exc.__cause__
    return "\n".join(text)


# -- array-level checks -----------------------------------------------------------------------------------------


def test_check_finite_counts_nan_and_inf():
    a = np.ones((4, 5, 6), np.float32)
    check_finite(a, "ok")
    check_finite(np.arange(10), "integers")
    check_finite(torch.ones(3, 3), "tensor")
    a[0, 0, :3] = np.nan
    a[1, 1, 1] = np.inf
    a[2, 2, 2] = -np.inf
    assert count_nonfinite(a) == (3, 2) == count_nonfinite(torch.from_numpy(a))
    with pytest.raises(
        NonFiniteDataError, match=r"^the dwi has 5 non-finite voxels \(3 NaN, 2 Inf\) out of 120; "
    ) as e:
        check_finite(a, "the dwi")
    assert (e.value.n_nan, e.value.n_inf, e.value.n_voxels, e.value.where) == (3, 2, 120, "the dwi")
    assert isinstance(e.value, ValueError)
    with pytest.raises(NonFiniteDataError, match=r"has 5 non-finite voxels"):
        check_finite(MetaTensor(torch.from_numpy(a)), "a MetaTensor")


def test_all_zero_is_a_warning_only():
    assert is_all_zero(np.zeros((3, 3))) and is_all_zero(torch.zeros(2, 2)) and is_all_zero(np.zeros(0))
    assert not is_all_zero(np.array([0.0, 1e-30])) and not is_all_zero(np.array([np.nan]))
    with pytest.warns(AllZeroImageWarning, match=r"^case X image is all zero"):
        assert warn_if_all_zero(np.zeros((2, 2)), "case X image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_all_zero(np.ones((2, 2)), "fine")


def test_check_finited_names_case_key_file_and_count():
    t = torch.ones(1, 4, 4, 4)
    t[0, 0, 0, :2] = float("nan")
    data = {"image": MetaTensor(t, meta={"filename_or_obj": "/data/x_dwi.nii.gz"}), "case_id": "sub-x"}
    with pytest.raises(NonFiniteDataError, match=r"^case sub-x 'image' \(/data/x_dwi.nii.gz\) has 2 non-finite voxels"):
        CheckFinited(keys="image")(data)
    label = {"label": np.full((1, 2, 2, 2), np.inf), "label_meta_dict": {"filename_or_obj": "m.nii"}}
    with pytest.raises(NonFiniteDataError, match=r"^'label' \(m.nii\) has 8 non-finite voxels \(0 NaN, 8 Inf\)"):
        CheckFinited(keys="label")(label)
    ok = {"image": torch.ones(1, 2, 2, 2), "label": torch.zeros(1, 2, 2, 2)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty label is a lesion-free case, not a warning
        out = CheckFinited(keys=["image", "label"], warn_all_zero_keys="image")(ok)
    assert out["image"] is ok["image"]  # data pass unchanged
    with pytest.warns(AllZeroImageWarning, match=r"'image' \(file name unknown\) is all zero"):
        CheckFinited(keys="image", warn_all_zero_keys="image")({"image": torch.zeros(1, 2, 2, 2)})
    with pytest.raises(KeyError):
        CheckFinited(keys=["image", "label"])({"image": torch.ones(1)})
    CheckFinited(keys=["image", "label"], allow_missing_keys=True)({"image": torch.ones(1)})


# -- the scenario: a NaN region in one validation image ---------------------------------------------------------


def test_nan_in_a_validation_image_is_an_error_at_check_and_load_time(tiny, capsys):
    val = _entries(tiny, "validation")[0]
    cid, path = val["case_id"], Path(val["image"])
    n = _poison(path, np.nan)

    # what went wrong before: the header-only check passes, the normalisation spreads the NaN over the whole image,
    # and whatever the network makes of it the case scores Dice 0 without a word
    entry = _entries(tiny, "validation")[0]
    assert entry["case_id"] == cid
    img = nib.load(str(path))
    raw = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None]
    normalised = NormalizeIntensityd("image", nonzero=True, channel_wise=True)({"image": raw})["image"]
    assert torch.isnan(normalised[raw != 0]).all()  # the whole head, not only the NaN region
    label = np.asarray(nib.load(entry["label"]).dataobj) > 0
    assert case_metrics((normalised[0] > 0).numpy(), label, (2.0, 2.0, 3.0))["dice"] == 0.0

    # now: an error at check time, naming the case, its split, the file and the count
    with pytest.raises(DataError) as e:
        isles22_datalist(tiny, labeled_count=2, check_data=True)
    msg = str(e.value)
    assert f"dwi image of case {cid} (validation set): {path} has {n} non-finite voxels ({n} NaN, 0 Inf)" in msg
    assert e.value.case_id == cid and e.value.path == str(path)
    assert isinstance(e.value.__cause__, NonFiniteDataError)
    # ... and through the CLI flag
    assert main(["--root", str(tiny), "--labeled-count", "2", "--check-data", "--out", str(tiny / "d.json")]) == 2
    assert f"case {cid} (validation set)" in capsys.readouterr().err and not (tiny / "d.json").exists()

    # and at load time, in the chain that reads validation cases
    with pytest.raises(RuntimeError) as e:
        validation_transforms(pixdim=2.0)(entry)
    assert f"case {cid} 'image' ({path}) has {n} non-finite voxels ({n} NaN, 0 Inf)" in _causes(e.value)


def test_inf_in_training_images_of_both_streams(tiny):
    unl = _entries(tiny, "training_unlabeled")[0]
    n = _poison(Path(unl["image"]), np.inf, (slice(0, 1), slice(0, 2), slice(0, 1)))
    with pytest.raises(DataError, match=rf"dwi image of case {unl['case_id']} \(training set\): .* has {n} non-finite"):
        isles22_datalist(tiny, labeled_count=2, check_data=True)
    with pytest.raises(RuntimeError) as e:
        unlabeled_train_transforms(patch_size=(8, 8, 8), pixdim=2.0, augment=False)(unl)
    assert f"case {unl['case_id']} 'image' ({unl['image']}) has {n} non-finite voxels (0 NaN, {n} Inf)" in _causes(
        e.value
    )
    with pytest.raises(RuntimeError) as e:
        inference_transforms(pixdim=2.0)({"image": unl["image"]})  # no case id: key and file
    assert f"'image' ({unl['image']}) has {n} non-finite voxels" in _causes(e.value)

    lab = _entries(tiny, "training_labeled")[0]
    _poison(Path(lab["image"]), -np.inf)
    with pytest.raises(RuntimeError) as e:
        labeled_train_transforms(patch_size=(8, 8, 8), pixdim=2.0, augment=False)(lab)
    assert f"case {lab['case_id']} 'image' ({lab['image']})" in _causes(e.value)


def test_nan_in_a_second_modality_test_case(tiny):
    test = _entries(tiny, "test", modalities=("dwi", "adc"))[0]
    adc = _dwi(tiny, test["case_id"], "adc")
    _poison(adc, np.nan)
    isles22_datalist(tiny, labeled_count=2, check_data=True)  # DWI only: the ADC is not used
    with pytest.raises(DataError, match=rf"adc image of case {test['case_id']} \(test set\): {adc} has 27 non-fin"):
        isles22_datalist(tiny, labeled_count=2, modalities=("dwi", "adc"), check_data=True)
    with pytest.raises(RuntimeError) as e:
        validation_transforms(pixdim=2.0)(test)
    dwi = _dwi(tiny, test["case_id"])
    assert (  # MONAI keeps the first file name only; the per-file counts say which one
        f"case {test['case_id']} 'image' (2 files stacked as channels, the first {dwi}; non-finite voxels per file "
        "in list order: [0, 27]) has 27 non-finite voxels (27 NaN, 0 Inf)"
    ) in _causes(e.value)
    # a blank modality among several is named by its position in the list
    _write(adc, np.zeros(SHAPE, np.float32))
    with pytest.warns(
        AllZeroImageWarning, match=r"the first .*_dwi.nii.gz\), channel 1 \(file 1 of its list\), is all"
    ):
        validation_transforms(pixdim=2.0)(test)


def test_all_zero_image_warns_at_check_and_load_time(tiny):
    unl = _entries(tiny, "training_unlabeled")[1]
    path = Path(unl["image"])
    _write(path, np.zeros(SHAPE, np.float32))
    with pytest.warns(AllZeroImageWarning, match=rf"dwi image of case {unl['case_id']} \(training set\): .* all zero"):
        d = isles22_datalist(tiny, labeled_count=2, check_data=True)
    assert unl["case_id"] in [e["case_id"] for e in d["training_unlabeled"]]  # kept
    with pytest.warns(AllZeroImageWarning, match=rf"case {unl['case_id']} 'image' \({path}\) is all zero"):
        inference_transforms(pixdim=2.0)(unl)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AllZeroImageWarning)
        isles22_datalist(tiny, labeled_count=2)  # without check_data the voxels are not read
