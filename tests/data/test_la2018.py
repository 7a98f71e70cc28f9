"""LA 2018: the h5 reader, both folder forms, the published split, labeled subsets and the data checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dycon_monai.data import H5Reader, la2018_datalist, la_inference_transforms, la_train_transforms, scan_la2018
from dycon_monai.data.checks import NonFiniteDataError
from dycon_monai.data.isles22_layout import DataError, MissingFileError
from dycon_monai.data.la2018 import la2018_published_split
from dycon_monai.data.la_transforms import la_label_loader


def _split(root):
    return root / "split.json"


def test_published_split_is_80_train_20_test_disjoint():
    split = la2018_published_split()
    assert len(split["train"]) == 80 and len(split["test"]) == 20
    assert not set(split["train"]) & set(split["test"])
    assert len(set(split["train"])) == 80


def test_h5_reader_gives_array_and_spacing_affine(synthetic_la):
    from monai.transforms import LoadImage

    path = next(synthetic_la.glob("*/mri_norm2.h5"))
    img = LoadImage(reader=H5Reader("image"), image_only=True)(path)
    lab = LoadImage(reader=H5Reader("label"), image_only=True)(path)
    assert img.shape == (64, 56, 32) and img.dtype == torch.float32
    assert set(torch.unique(lab).tolist()) <= {0, 1}
    np.testing.assert_allclose(np.asarray(img.affine), np.diag([0.625, 0.625, 0.625, 1.0]))
    assert H5Reader().verify_suffix("a/b.h5") and not H5Reader().verify_suffix("a.nii.gz")


def test_h5_reader_names_missing_dataset(tmp_path):
    import h5py

    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(KeyError, match="no dataset 'label'"):
        H5Reader("label").read(path)


def test_datalist_labeled_subset_by_count_and_seed(synthetic_la):
    a = la2018_datalist(synthetic_la, labeled_count=2, seed=0, split_file=_split(synthetic_la))
    b = la2018_datalist(synthetic_la, labeled_count=2, seed=1, split_file=_split(synthetic_la))
    first = la2018_datalist(synthetic_la, labeled_count=2, split_file=_split(synthetic_la), labeled_selection="first")
    train = json.loads(_split(synthetic_la).read_text())["train"]
    assert [d["case_id"] for d in first["training_labeled"]] == train[:2]
    for dl in (a, b):
        ids = {d["case_id"] for d in dl["training_labeled"]} | {d["case_id"] for d in dl["training_unlabeled"]}
        assert ids == set(train)
        assert all("label" not in d for d in dl["training_unlabeled"])
        assert all("label" in d for d in dl["test"])
    every = la2018_datalist(synthetic_la, labeled_count="all", split_file=_split(synthetic_la))
    assert len(every["training_labeled"]) == 5 and every["training_unlabeled"] == []
    with pytest.raises(DataError, match="impossible"):
        la2018_datalist(synthetic_la, labeled_count=9, split_file=_split(synthetic_la))


def test_published_split_needs_every_case(synthetic_la):
    with pytest.raises(MissingFileError, match="published LA split"):
        la2018_datalist(synthetic_la)


def test_scan_names_case_without_file(synthetic_la, tmp_path):
    root = tmp_path / "la"
    shutil.copytree(synthetic_la, root)
    case = sorted(p for p in root.iterdir() if p.is_dir())[1]
    (case / "mri_norm2.h5").unlink()
    with pytest.raises(MissingFileError, match=case.name):
        scan_la2018(root, form="h5")


def test_check_data_refuses_nan_image(synthetic_la, tmp_path):
    import h5py

    root = tmp_path / "la"
    shutil.copytree(synthetic_la, root)
    test_case = json.loads(_split(root).read_text())["test"][0]
    with h5py.File(root / test_case / "mri_norm2.h5", "r+") as f:
        data = f["image"][()]
        data[:3] = np.nan
        f["image"][...] = data
    with pytest.raises(NonFiniteDataError, match=test_case):
        la2018_datalist(root, labeled_count=2, split_file=_split(root), check_data=True)
    with pytest.raises(RuntimeError) as info:  # Compose wraps the error; its cause names the case
        la_inference_transforms((2.5,) * 3)({"case_id": test_case, "image": str(root / test_case / "mri_norm2.h5")})
    assert isinstance(info.value.__cause__, NonFiniteDataError) and test_case in str(info.value.__cause__)


def test_challenge_nrrd_form_reads_0_255_labels(tmp_path):
    itk = pytest.importorskip("itk")
    rng = np.random.default_rng(0)
    ids = [f"CASE{i}" for i in range(4)]
    for cid in ids:
        (tmp_path / cid).mkdir()
        image = rng.normal(100, 20, (24, 28, 20)).astype(np.float32)  # z, y, x as ITK arrays are
        label = np.zeros(image.shape, np.uint8)
        label[8:16, 10:18, 6:14] = 255
        for arr, name in ((image, "lgemri.nrrd"), (label, "laendo.nrrd")):
            img = itk.image_from_array(arr)
            img.SetSpacing((0.625, 0.625, 1.25))
            itk.imwrite(img, str(tmp_path / cid / name))
    (tmp_path / "split.json").write_text(json.dumps({"train": ids[:3], "test": ids[3:]}))
    dl = la2018_datalist(tmp_path, labeled_count=1, split_file=tmp_path / "split.json", check_data=True)
    assert dl["meta"]["form"] == "nrrd"
    out = la_train_transforms((16, 16, 8), (1.25,) * 3, labeled=True, form="nrrd")(dl["training_labeled"][0])
    assert out["image"].shape == (1, 16, 16, 8) and set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
    lab = la_label_loader("label", form="nrrd")({"label": dl["test"][0]["label"]})["label"]
    assert lab.shape == (1, 20, 28, 24) and float(lab.sum()) == 8 * 8 * 8


def test_unlabeled_chain_never_reads_label(synthetic_la):
    dl = la2018_datalist(synthetic_la, labeled_count=2, split_file=_split(synthetic_la))
    item = dict(dl["training_unlabeled"][0], label="/nonexistent/never_read.h5")
    out = la_train_transforms((32, 32, 16), (2.5,) * 3, labeled=False)(item)
    assert out["image"].shape == (1, 32, 32, 16) and out["label"] == "/nonexistent/never_read.h5"
