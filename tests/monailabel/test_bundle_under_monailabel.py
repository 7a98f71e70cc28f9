"""What MONAI Label relies on in the dycon_isles bundle, checked without a server (no monailabel needed).

- The unlabeled stream is explicit (``train#unlabeled_dataset#data`` is the datalist's unlabeled split): MONAI Label's
  train task sets both streams (``train#dataset#data`` and ``train#unlabeled_dataset#data``), and then no
  ``dataset_dir`` is read; a stream left to the datalist without a dataset stops with the "no readable dataset" error.
- ``publish_model`` puts the trained weights where MONAI Label serves them, only when switched on (the default of
  ``train.json`` is off, so a command-line run never replaces ``<bundle>/models/model.pt``).
- Building ``inference.json``'s post-processing (as MONAI Label does for every model) creates no run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from dycon_monai.bundle import make_run_dir, plan_run_dir, publish_model
from dycon_monai.data import DatasetNotFoundError

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "dycon_isles" / "configs"


def _train_parser(**overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _root_cause(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def test_both_streams_given_read_no_dataset(tmp_path):
    labeled = [{"image": str(tmp_path / f"s{i}.nii.gz"), "label": str(tmp_path / f"l{i}.nii.gz")} for i in range(2)]
    unlabeled = [{"image": str(tmp_path / "u.nii.gz")}]
    parser = _train_parser(
        **{
            "train#dataset#data": labeled,
            "train#unlabeled_dataset#data": unlabeled,
            "dataset_dir": str(tmp_path / "missing"),
        }
    )
    assert parser.get_parsed_content("train#dataset#data") == labeled
    assert parser.get_parsed_content("train#unlabeled_dataset#data") == unlabeled


def test_the_unlabeled_stream_is_the_datalists_unlabeled_split(tmp_path):
    assert _train_parser()["train#unlabeled_dataset#data"] == "$@datalist['training_unlabeled']"
    parser = _train_parser(dataset_dir=str(tmp_path / "missing"))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#unlabeled_dataset#data")
    assert isinstance(_root_cause(info.value), DatasetNotFoundError)
    assert "No readable ISLES'22 dataset" in str(_root_cause(info.value))


def test_publish_model_only_when_asked(tmp_path):
    assert _train_parser().get("publish_model_to_bundle") is False  # the command line never publishes by default
    ckpt, bundle = tmp_path / "run" / "models", tmp_path / "bundle"
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, ckpt / "model.pt")
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(b"shipped")

    assert publish_model(ckpt, bundle, enabled=False) is None
    assert publish_model(ckpt, bundle, enabled="false") is None
    assert (bundle / "models" / "model.pt").read_bytes() == b"shipped"

    assert publish_model(ckpt, bundle, enabled="true") == str(bundle / "models" / "model.pt")
    assert torch.equal(torch.load(bundle / "models" / "model.pt")["w"], torch.ones(2))
    assert sorted(os.listdir(bundle / "models")) == ["model.pt"]  # no temporary file left

    # a run that never saved best weights publishes the network's final weights
    net = torch.nn.Linear(2, 1)
    publish_model(tmp_path / "empty", bundle, enabled=True, network=net)
    state = torch.load(bundle / "models" / "model.pt")
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], net.weight.detach())
    with pytest.raises(FileNotFoundError, match="saved no"):
        publish_model(tmp_path / "empty", bundle, enabled=True)


def test_inference_postprocessing_creates_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(CONFIGS.parent)
    parser.get_parsed_content("postprocessing", instantiate=True)
    run_dir = Path(parser.get_parsed_content("run_dir"))
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("infer_")
    assert not (tmp_path / "runs").exists()


def test_planned_run_dir_is_created_with_the_usual_rules(tmp_path):
    planned = plan_run_dir(tmp_path, prefix="infer")
    assert not Path(planned).exists()
    assert make_run_dir(planned) == planned and Path(planned).is_dir()
    with pytest.raises(FileExistsError, match="same second"):
        make_run_dir(planned)

    named = plan_run_dir(tmp_path, name="mine")
    assert named == str(tmp_path / "mine")
    make_run_dir(named, name="mine")
    (Path(named) / "out.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="Refusing to overwrite"):
        make_run_dir(named, name="mine")
