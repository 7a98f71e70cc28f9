"""BraTS 2019: release layouts, the published split, labeled subsets, label targets, bad inputs, transform chains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from dycon_monai.data.brats19 import (
    BRATS_RELEASE_FOLDER,
    BRATS_TARGETS,
    brats19_datalist,
    brats19_inference_datalist,
    brats19_published_split,
    resolve_brats19_root,
    scan_brats19,
)
from dycon_monai.data.brats19_transforms import (
    BraTSLabeld,
    brats_inference_transforms,
    brats_label_loader,
    brats_train_transforms,
)
from dycon_monai.data.isles22_layout import DataError, MissingFileError
from dycon_monai.data.subsets import labeled_count_of
from dycon_monai.data.synthetic_brats import brats_grade, main, make_synthetic_brats
from dycon_monai.data.transforms import FillBackgroundd

REFERENCE = Path("/work/shared/reference/brats19")


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    """6 training, 2 validation and 2 test cases of the published split, 32 x 32 x 24 (read-only: copy to change)."""
    return make_synthetic_brats(tmp_path_factory.mktemp("brats19"), n_train=6, n_val=2, n_test=2, seed=0)


def _copy(brats: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(brats, root)
    return root


def _split(root: Path) -> Path:
    return root / "split.json"


def _case_dir(root: Path, case_id: str) -> Path:
    return root / BRATS_RELEASE_FOLDER / brats_grade(case_id) / case_id


def test_published_split_is_250_25_60_unique_and_disjoint():
    split = brats19_published_split()
    assert [len(split[k]) for k in ("train", "val", "test")] == [250, 25, 60]
    ids = split["train"] + split["val"] + split["test"]
    assert len(set(ids)) == 335 and all(c.startswith("BraTS19_") for c in ids)
    if REFERENCE.is_dir():  # the package data is the published lists, unchanged
        for k in ("train", "val", "test"):
            assert (REFERENCE / f"{k}.txt").read_text().split() == split[k]


def test_labeled_fraction_of_250_gives_25_and_50():
    assert labeled_count_of(250, None, 0.1) == 25 and labeled_count_of(250, None, 0.2) == 50


def test_three_root_layouts_and_grades(brats):
    base = brats / BRATS_RELEASE_FOLDER
    assert resolve_brats19_root(brats) == base and resolve_brats19_root(base) == base
    cases = scan_brats19(brats, modalities=("flair", "t2"))
    assert len(cases) == 10 and {c["grade"] for c in cases.values()} == {"HGG", "LGG"}
    cid = "BraTS19_TCIA12_470_1"  # first training ids include an LGG case
    assert cases[cid]["grade"] == "LGG" and cases[cid]["images"]["t2"].endswith(f"{cid}_t2.nii.gz")
    a = brats19_datalist(brats, labeled_count=2, split_file=_split(brats))
    b = brats19_datalist(base, labeled_count=2, split_file=_split(brats))
    assert a["training_labeled"] == b["training_labeled"]


def test_root_without_release_names_the_expected_layout(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        resolve_brats19_root(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match=r"HGG,LGG\}/<case>/<case>_\{flair"):
        resolve_brats19_root(tmp_path)


def test_datalist_subsets_validation_test_and_unlabeled_without_label(brats):
    split = json.loads(_split(brats).read_text())
    a = brats19_datalist(brats, labeled_count=2, seed=0, split_file=_split(brats))
    b = brats19_datalist(brats, labeled_count=None, labeled_fraction=0.5, seed=1, split_file=_split(brats))
    first = brats19_datalist(brats, labeled_count=2, split_file=_split(brats), labeled_selection="first")
    assert [d["case_id"] for d in first["training_labeled"]] == split["train"][:2]
    assert len(b["training_labeled"]) == 3
    for dl in (a, b, first):
        ids = [d["case_id"] for d in dl["training_labeled"] + dl["training_unlabeled"]]
        assert sorted(ids) == sorted(split["train"])
        assert all(set(d) == {"case_id", "image"} for d in dl["training_unlabeled"])
        assert all(d["label"].endswith("_seg.nii.gz") for d in dl["training_labeled"])
        assert [d["case_id"] for d in dl["validation"]] == split["val"]
        assert [d["case_id"] for d in dl["test"]] == split["test"] and all("label" in d for d in dl["test"])
    assert a["training_labeled"][0]["image"].endswith("_flair.nii.gz")
    every = brats19_datalist(brats, labeled_count="all", split_file=_split(brats))
    assert len(every["training_labeled"]) == 6 and every["training_unlabeled"] == []
    with pytest.raises(DataError, match="impossible"):
        brats19_datalist(brats, labeled_count=7, split_file=_split(brats))


def test_modalities_in_the_order_given(brats):
    dl = brats19_datalist(brats, labeled_count=1, split_file=_split(brats), modalities=["t1ce", "flair", "t2"])
    image = dl["training_labeled"][0]["image"]
    assert [Path(p).name.split("_")[-1] for p in image] == ["t1ce.nii.gz", "flair.nii.gz", "t2.nii.gz"]
    out = brats_train_transforms((16, 16, 16), labeled=True, target="subregions", augment=False)(
        dl["training_labeled"][0]
    )
    assert out["image"].shape == (3, 16, 16, 16) and set(torch.unique(out["label"]).tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="modalities must be"):
        brats19_datalist(brats, split_file=_split(brats), modalities=["flair", "dwi"])
    with pytest.raises(ValueError, match="target must be"):
        brats19_datalist(brats, split_file=_split(brats), target="edema")


def test_published_split_needs_every_case_unless_allow_missing(brats):
    with pytest.raises(MissingFileError, match="published BraTS 2019 split"):
        brats19_datalist(brats)
    dl = brats19_datalist(brats, labeled_count=2, allow_missing=True)
    assert dl["meta"]["n_train"] == 6 and dl["meta"]["n_val"] == 2 and dl["meta"]["n_test"] == 2
    assert len(dl["meta"]["missing"]) == 335 - 10


def test_case_of_split_file_missing_in_folder_is_named(brats, tmp_path):
    split = json.loads(_split(brats).read_text())
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps(dict(split, train=split["train"] + ["BraTS19_NO_SUCH_1"])))
    with pytest.raises(MissingFileError, match="BraTS19_NO_SUCH_1"):
        brats19_datalist(brats, split_file=bad, labeled_count=2)
    both = tmp_path / "both.json"
    both.write_text(json.dumps(dict(split, test=split["test"] + split["val"][:1])))
    with pytest.raises(DataError, match="both the val and the test"):
        brats19_datalist(brats, split_file=both, labeled_count=2)


def test_missing_modality_names_case_file_and_expectation(brats, tmp_path):
    root = _copy(brats, tmp_path)
    cid = json.loads(_split(root).read_text())["train"][3]
    (_case_dir(root, cid) / f"{cid}_t1ce.nii.gz").unlink()
    brats19_datalist(root, labeled_count=2, split_file=_split(root))  # FLAIR only: t1ce not needed
    with pytest.raises(MissingFileError) as info:
        brats19_datalist(root, labeled_count=2, split_file=_split(root), modalities=["flair", "t1ce"])
    msg = str(info.value)
    assert cid in msg and f"{cid}_t1ce.nii.gz" in msg and "expect" in msg and info.value.case_id == cid
    with pytest.raises(MissingFileError, match=f"{cid}_t1ce.nii.gz"):
        brats19_inference_datalist(_case_dir(root, cid).parent, modalities=["flair", "t1ce"])


def test_missing_label_of_a_case_that_needs_one(brats, tmp_path):
    root = _copy(brats, tmp_path)
    split = json.loads(_split(root).read_text())
    (_case_dir(root, split["test"][0]) / f"{split['test'][0]}_seg.nii.gz").unlink()
    with pytest.raises(MissingFileError, match=split["test"][0]):
        brats19_datalist(root, labeled_count=2, split_file=_split(root))
    unlabeled = split["train"][-1]  # an unlabeled case without a label file is fine
    (_case_dir(root, unlabeled) / f"{unlabeled}_seg.nii.gz").unlink()
    (_case_dir(root, split["test"][0]) / f"{split['test'][0]}_seg.nii.gz").write_bytes(
        (_case_dir(brats, split["test"][0]) / f"{split['test'][0]}_seg.nii.gz").read_bytes()
    )
    dl = brats19_datalist(root, labeled_count=2, split_file=_split(root), labeled_selection="first")
    assert unlabeled in [d["case_id"] for d in dl["training_unlabeled"]]


def test_label_values_outside_the_release_set_are_refused(brats, tmp_path):
    root = _copy(brats, tmp_path)
    cid = json.loads(_split(root).read_text())["test"][1]
    path = _case_dir(root, cid) / f"{cid}_seg.nii.gz"
    img = nib.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[data == 4] = 3  # a relabelled file (ET as 3), not the release's
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    brats19_datalist(root, labeled_count=2, split_file=_split(root))  # only check_data reads the files
    with pytest.raises(DataError) as info:
        brats19_datalist(root, labeled_count=2, split_file=_split(root), check_data=True)
    assert str(path) in str(info.value) and "0, 1, 2, 3" in str(info.value) and "4 enhancing" in str(info.value)
    with pytest.raises(RuntimeError) as info:  # Compose wraps the error; its cause names the file and values
        brats_label_loader("label")({"label": str(path)})
    assert isinstance(info.value.__cause__, DataError) and str(path) in str(info.value.__cause__)


def test_check_data_passes_on_clean_cohort(brats):
    dl = brats19_datalist(brats, labeled_count=2, split_file=_split(brats), check_data=True)
    assert dl["meta"]["target"] == "whole_tumor" and dl["meta"]["modalities"] == ["flair"]


@pytest.mark.parametrize("target", sorted(BRATS_TARGETS))
def test_label_mapping_of_each_target(target):
    raw = MetaTensor(torch.tensor([0, 1, 2, 4, 4, 2]).reshape(1, 6, 1, 1).float())
    out = BraTSLabeld("label", target=target, image_key=None)({"label": raw})["label"]
    expected = {
        "whole_tumor": [0, 1, 1, 1, 1, 1],
        "tumor_core": [0, 1, 0, 1, 1, 0],
        "enhancing_tumor": [0, 0, 0, 1, 1, 0],
        "subregions": [0, 1, 2, 3, 3, 2],
    }[target]
    assert out.flatten().tolist() == expected and out.dtype == torch.float32 and isinstance(out, MetaTensor)


def test_inference_chain_crops_brain_clips_and_zscores(brats):
    dl = brats19_datalist(brats, labeled_count=2, split_file=_split(brats))
    entry = dl["test"][0]
    raw = np.asarray(nib.load(entry["image"]).dataobj).astype(np.float32)
    nz = np.nonzero(raw)
    bbox = tuple(int(a.max() - a.min() + 1) for a in nz)
    out = brats_inference_transforms()(dict(entry))["image"]
    assert tuple(out.shape) == (1, *bbox) and out.dtype == torch.float32
    brain = out[out != 0]
    assert abs(float(brain.mean())) < 1e-3 and abs(float(brain.std()) - 1.0) < 1e-2
    assert int((out != 0).sum()) == len(nz[0])  # the background stays 0
    unclipped = brats_inference_transforms(clip_percentiles=None)(dict(entry))["image"]
    assert float(out.max()) < float(unclipped.max())  # the 99.5 % clip trims the brightest voxels


def test_train_chain_patch_shapes_and_labels(brats):
    dl = brats19_datalist(brats, labeled_count=2, split_file=_split(brats))
    lab = brats_train_transforms((40, 40, 16), labeled=True)(dl["training_labeled"][0])  # larger than the brain
    assert lab["image"].shape == (1, 40, 40, 16) and lab["label"].shape == (1, 40, 40, 16)
    assert set(torch.unique(lab["label"]).tolist()) <= {0.0, 1.0} and float(lab["label"].sum()) > 0
    item = dict(dl["training_unlabeled"][0], label="/nonexistent/never_read.nii.gz")
    unl = brats_train_transforms((16, 16, 16), labeled=False)(item)
    assert unl["image"].shape == (1, 16, 16, 16) and unl["label"] == "/nonexistent/never_read.nii.gz"


def test_fill_background_makes_inverted_prediction_a_distribution():
    p = torch.zeros(2, 3, 3, 3)
    p[:, 1, 1, 1] = torch.tensor([0.2, 0.8])
    out = FillBackgroundd("pred")({"pred": p})["pred"]
    assert torch.allclose(out.sum(0), torch.ones(3, 3, 3)) and float(out[1, 1, 1, 1]) == pytest.approx(0.8)


def test_inference_datalist_and_label_loader(brats):
    split = json.loads(_split(brats).read_text())
    cases = brats19_inference_datalist(brats / BRATS_RELEASE_FOLDER)
    assert len(cases) == 10 and all(c["image"].endswith("_flair.nii.gz") for c in cases)
    one = brats19_inference_datalist(_case_dir(brats, split["test"][0]), modalities=["flair", "t2"])
    assert len(one) == 1 and len(one[0]["image"]) == 2
    seg = _case_dir(brats, split["test"][0]) / f"{split['test'][0]}_seg.nii.gz"
    lab = brats_label_loader("label", target="tumor_core")({"label": str(seg)})["label"]
    raw = np.asarray(nib.load(str(seg)).dataobj)
    assert lab.shape == (1, *raw.shape) and float(lab.sum()) == float(np.isin(raw, (1, 4)).sum())


def test_synthetic_cli_writes_release_layout_and_split(tmp_path):
    assert main([str(tmp_path), "--n_train", "2", "--n_val", "1", "--n_test", "0", "--shape", "20", "20", "16"]) == 0
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["train"] == brats19_published_split()["train"][:2] and split["test"] == []
    cid = split["val"][0]
    files = sorted(p.name for p in _case_dir(tmp_path, cid).iterdir())
    assert files == sorted(f"{cid}_{s}.nii.gz" for s in ("flair", "t1", "t1ce", "t2", "seg"))
    seg = nib.load(str(_case_dir(tmp_path, cid) / f"{cid}_seg.nii.gz"))
    assert seg.shape == (20, 20, 16) and set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}
    with pytest.raises(ValueError, match="not in the published"):
        make_synthetic_brats(tmp_path / "x", cases=["BraTS19_NOPE_1"])
