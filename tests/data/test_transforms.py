from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import set_determinism

from dycon_monai.data import isles22_datalist
from dycon_monai.data.transforms import (
    BinarizeLabeld,
    head_foreground,
    inference_transforms,
    labeled_train_transforms,
    unlabeled_train_transforms,
    validation_transforms,
)

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def datalist(synthetic_cohort):
    return isles22_datalist(synthetic_cohort, labeled_count=10)  # every training case labeled


def _root_cause(exc: BaseException) -> str:
    text = []
    while exc is not None:
        text.append(str(exc))
        exc = exc.__cause__
    return "\n".join(text)


def test_labeled_chain_shapes_dtypes_spacing_labels(datalist):
    set_determinism(0)
    tr = labeled_train_transforms(patch_size=PATCH, pixdim=(6.0, 6.0, 6.0), num_samples=2)
    lesion_entry = next(e for e in datalist["training_labeled"] if not e["lesion_free"])
    out = tr(lesion_entry)
    assert isinstance(out, list) and len(out) == 2
    for s in out:
        assert s["image"].shape == (1, *PATCH) and s["label"].shape == (1, *PATCH)
        assert s["image"].dtype == torch.float32 and s["label"].dtype == torch.float32
        assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0}
        np.testing.assert_allclose(s["image"].pixdim.numpy(), [6.0, 6.0, 6.0], atol=1e-4)
    assert any(s["label"].sum() > 0 for s in out), "RandCropByPosNegLabeld should sample lesion patches"
    set_determinism(None)


def test_lesion_free_case_gives_background_patches(datalist):
    free = next(e for k in ("training_labeled", "validation", "test") for e in datalist[k] if e["lesion_free"])
    out = labeled_train_transforms(patch_size=PATCH, pixdim=6.0)(free)
    assert out[0]["label"].sum() == 0 and out[0]["image"].shape == (1, *PATCH)


def test_unlabeled_chain_never_touches_label(datalist):
    entry = dict(datalist["training_labeled"][0])
    entry["label"] = "/nonexistent/label.nii.gz"  # would fail if it were read
    out = unlabeled_train_transforms(patch_size=PATCH, pixdim=6.0, num_samples=1)(entry)
    assert out["label"] == "/nonexistent/label.nii.gz"
    assert out["image"].shape == (1, *PATCH) and out["image"].dtype == torch.float32
    outs = unlabeled_train_transforms(patch_size=PATCH, pixdim=6.0, num_samples=3)(
        datalist["training_unlabeled"][0] if datalist["training_unlabeled"] else {"image": entry["image"]}
    )
    assert len(outs) == 3 and all(o["image"].shape == (1, *PATCH) for o in outs)


def test_patch_larger_than_image_is_padded(datalist):
    big = (48, 48, 48)  # the 6 mm volumes are ~30^3
    entry = datalist["training_labeled"][0]
    out = labeled_train_transforms(patch_size=big, pixdim=6.0)(entry)
    assert out[0]["image"].shape == (1, *big) and out[0]["label"].shape == (1, *big)
    assert unlabeled_train_transforms(patch_size=big, pixdim=6.0)({"image": entry["image"]})["image"].shape == (1, *big)


def test_validation_resamples_and_normalises(datalist):
    entry = datalist["validation"][0]
    out = validation_transforms(pixdim=(4.0, 4.0, 4.0))(entry)
    src = nib.load(entry["image"]).shape
    img, lab = out["image"], out["label"]
    np.testing.assert_allclose(img.pixdim.numpy(), [4.0, 4.0, 4.0], atol=1e-4)
    assert img.shape[1:] == lab.shape[1:] and img.shape[0] == 1
    assert all(abs(n - s * 6 / 4) <= 2 for n, s in zip(img.shape[1:], src))
    assert set(torch.unique(lab).tolist()) <= {0.0, 1.0}
    nz = img[img != 0]
    assert abs(float(nz.mean())) < 0.05 and abs(float(nz.std()) - 1.0) < 0.05
    cropped = validation_transforms(pixdim=6.0, crop_foreground=True)(entry)
    assert all(c <= s for c, s in zip(cropped["image"].shape[1:], src))


def test_inference_chain_is_invertible(datalist):
    from monai.transforms import Invertd

    entry = {"image": datalist["test"][0]["image"]}
    tr = inference_transforms(pixdim=(4.0, 4.0, 4.0))
    out = tr(entry)
    out["pred"] = MetaTensor(torch.zeros_like(out["image"]), meta=out["image"].meta)
    out["pred"].applied_operations = list(out["image"].applied_operations)
    inv = Invertd(keys="pred", transform=tr, orig_keys="image", nearest_interp=True)(out)
    assert tuple(inv["pred"].shape[1:]) == nib.load(entry["image"]).shape


def test_multimodal_stacks_channels(synthetic_cohort):
    d = isles22_datalist(synthetic_cohort, labeled_count=2, modalities=("dwi", "adc"))
    out = labeled_train_transforms(patch_size=PATCH, pixdim=6.0)(d["training_labeled"][0])
    assert out[0]["image"].shape == (2, *PATCH) and out[0]["label"].shape == (1, *PATCH)
    out = validation_transforms(pixdim=6.0)(d["validation"][0])
    for c in range(2):  # channel-wise normalisation
        nz = out["image"][c][out["image"][c] != 0]
        assert abs(float(nz.mean())) < 0.05


def test_label_mapping_and_bad_values(synthetic_cohort, tmp_path):
    root = Path(shutil.copytree(synthetic_cohort, tmp_path / "c"))
    d = isles22_datalist(root, labeled_count=2)
    entry = d["validation"][0]
    img = nib.load(entry["label"])
    data = np.asarray(img.dataobj).astype(np.uint8)
    data[data > 0] = 2
    data[1, 1, 1] = 4
    nib.save(nib.Nifti1Image(data, img.affine), entry["label"])
    with pytest.raises(RuntimeError) as e:
        validation_transforms(pixdim=6.0)(entry)
    msg = _root_cause(e.value)
    assert "has label values [0, 2, 4]; expected {0, 1}" in msg and entry["label"] in msg and "label_mapping" in msg
    out = validation_transforms(pixdim=6.0, label_mapping="brats_whole_tumor")(entry)
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    assert int(out["label"].sum()) == int((data > 0).sum())


def test_truncated_file_error_names_the_file(synthetic_cohort, tmp_path):
    root = Path(shutil.copytree(synthetic_cohort, tmp_path / "c"))
    entry = isles22_datalist(root, labeled_count=2)["training_unlabeled"][0]
    p = Path(entry["image"])
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(RuntimeError) as e:
        unlabeled_train_transforms(patch_size=PATCH, pixdim=6.0)(entry)
    msg = _root_cause(e.value)
    assert f"could not read case {entry['case_id']} image={p}" in msg and "truncated" in msg


def test_binarize_label_checks_geometry():
    img = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.eye(4), meta={"filename_or_obj": "img.nii.gz"})
    lab = MetaTensor(torch.zeros(1, 8, 8, 6), affine=torch.eye(4), meta={"filename_or_obj": "lab.nii.gz"})
    with pytest.raises(
        ValueError,
        match=r"case c1 'label' \(lab.nii.gz\) has spatial shape \(8, 8, 6\) but case c1 'image' \(img.nii.gz\) has \(8, 8, 8\)",
    ):
        BinarizeLabeld("label")({"image": img, "label": lab, "case_id": "c1"})
    aff = torch.eye(4)
    aff[0, 3] = 2.0
    lab = MetaTensor(torch.ones(1, 8, 8, 8), affine=aff, meta={"filename_or_obj": "lab.nii.gz"})
    with pytest.raises(ValueError, match="affine differs .* by 2 "):
        BinarizeLabeld("label")({"image": img, "label": lab})
    out = BinarizeLabeld("label", affine_tolerance=3.0)({"image": img, "label": lab})
    assert out["label"].dtype == torch.float32 and isinstance(out["label"], MetaTensor)
    out = BinarizeLabeld("label", label_mapping="nonzero")({"label": torch.tensor([[0.0, 3.0, 255.0]])})
    assert out["label"].tolist() == [[0.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match=r"label values \[0, 0.5\]"):
        BinarizeLabeld("label")({"label": torch.tensor([[0.0, 0.5]])})


def test_head_foreground_ignores_background_noise():
    x = torch.rand(1, 20, 20, 20) * 5.0  # noise
    x[:, 5:15, 5:15, 5:15] += 400.0
    fg = head_foreground(x)
    assert fg[:, 5:15, 5:15, 5:15].all() and not fg[:, :4].any()
    assert isinstance(head_foreground(x.numpy()), np.ndarray)


def test_chains_build_from_bundle_config():
    from monai.bundle import ConfigParser

    parser = ConfigParser(
        {
            "train": {
                "_target_": "dycon_monai.data.transforms.labeled_train_transforms",
                "patch_size": [16, 16, 16],
                "pixdim": [6, 6, 6],
            },
            "unl": {
                "_target_": "dycon_monai.data.unlabeled_train_transforms",
                "patch_size": [16, 16, 16],
                "pixdim": [6, 6, 6],
            },
        }
    )
    assert len(parser.get_parsed_content("train").transforms) > 5
    assert len(parser.get_parsed_content("unl").transforms) > 5
