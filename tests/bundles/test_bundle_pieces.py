"""The pieces the bundles run on (dycon_monai.bundle): run folders, override keys, run record, model files, inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

import dycon_monai.bundle as bundle
from dycon_monai.bundle import run_dir as rd
from dycon_monai.utils import as_bool

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "dycon_isles"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True),
        (False, False),
        ("true", True),
        ("False", False),
        ("yes", True),
        ("0", False),
        (1, True),
        (None, False),
    ],
)
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_other_values():
    with pytest.raises(ValueError, match="overwrite must be true or false, got 'maybe'"):
        as_bool("maybe", "overwrite")


def _create(output_dir, name=None, prefix="run", overwrite=False):
    return rd.make_run_dir(rd.plan_run_dir(output_dir, name=name, prefix=prefix), name=name, overwrite=overwrite)


def test_planned_run_dir_is_not_created_and_a_taken_one_is_refused(tmp_path):
    planned = Path(rd.plan_run_dir(tmp_path / "runs", prefix="infer"))
    assert not planned.exists() and planned.name.startswith("infer_")
    planned.mkdir(parents=True)  # another run took the name in the meantime
    with pytest.raises(FileExistsError, match="created by another run"):
        rd.make_run_dir(planned)


def test_new_run_dirs_never_collide(tmp_path):
    first = Path(_create(tmp_path, prefix="dycon"))
    second = Path(_create(tmp_path, prefix="dycon"))
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.startswith("dycon_") and first.parent == tmp_path


def test_named_run_dir_refuses_earlier_outputs(tmp_path):
    run = Path(_create(tmp_path, name="exp"))
    (run / bundle.RUN_INFO_FILENAME).write_text("{}")
    (run / "model.pt").write_text("weights")
    with pytest.raises(FileExistsError, match=r"already holds the outputs of an earlier run .*--overwrite true"):
        _create(tmp_path, name="exp")
    assert (run / "model.pt").read_text() == "weights"  # untouched
    again = Path(_create(tmp_path, name="exp", overwrite="true"))
    assert again == run and list(again.iterdir()) == []


def test_overwrite_never_deletes_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.nii.gz").write_text("x")
    with pytest.raises(FileExistsError, match="not a run directory of this bundle"):
        _create(tmp_path, name="data", overwrite=True)
    assert (tmp_path / "data" / "scan.nii.gz").exists()


def test_empty_named_dir_is_reused(tmp_path):
    (tmp_path / "exp").mkdir()
    assert Path(_create(tmp_path, name="exp")) == tmp_path / "exp"


def _raw(*files: str) -> dict:
    return ConfigParser.load_config_files(list(files))


def test_override_keys_accepts_defined_keys():
    keys = ["dataset_dir", "max_iterations", "train#trainer#amp", "train::trainer::amp", "overwrite", "_meta_#version"]
    assert bundle.check_override_keys(_raw(TRAIN), keys, [TRAIN]) == keys


def test_override_keys_rejects_typo_with_suggestion():
    with pytest.raises(
        ValueError, match=r"--max_iteration: not defined in .*train.json\. Did you mean --max_iterations"
    ):
        bundle.check_override_keys(_raw(TRAIN), ["max_iteration"], [TRAIN])


def test_override_keys_accepts_a_new_argument_of_a_component_only():
    assert bundle.check_override_keys(_raw(TRAIN), ["train#trainer#new_kwarg"]) == ["train#trainer#new_kwarg"]
    with pytest.raises(ValueError, match="--trian#trainer#amp"):
        bundle.check_override_keys(_raw(TRAIN), ["trian#trainer#amp"])


def test_override_keys_of_merged_configs_and_tracking():
    assert bundle.check_override_keys(_raw(TRAIN, EVALUATE), ["model_path", "split"]) == ["model_path", "split"]
    with pytest.raises(ValueError, match="--split"):
        bundle.check_override_keys(_raw(TRAIN), ["split"])  # evaluate.json's key, not train.json's
    assert bundle.check_override_keys(_raw(TRAIN), ["experiment_name"], allowed=bundle.TRACKING_KEYS)


def test_find_images(tmp_path, synthetic_cohort):
    items = bundle.find_images(synthetic_cohort)
    assert len(items) == 12 and all(i["image"].endswith("_dwi.nii.gz") for i in items)
    assert bundle.find_images(items[0]["image"]) == [items[0]]
    with pytest.raises(FileNotFoundError, match="No image matching"):
        bundle.find_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bundle.find_images(tmp_path / "nowhere")


def test_check_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model weights not found.*--model_path"):
        bundle.check_model_path(tmp_path / "model.pt")


def test_training_run_info_reads_the_run(tmp_path):
    run = tmp_path / "dycon_1"
    (run / "models").mkdir(parents=True)
    (run / bundle.RUN_INFO_FILENAME).write_text(json.dumps({"method": "mt_uncl", "labeled_fraction": 0.2, "seed": 3}))
    info = bundle.training_run_info(run / "models" / "model.pt", method="dycon", dataset="synthetic")
    assert info["method"] == "mt_uncl" and info["labeled_fraction"] == 0.2 and info["dataset"] == "synthetic"
    assert info["training_run"] == str(run.absolute())
    assert bundle.training_run_info(tmp_path / "x.pt", method="dycon")["training_run"] is None


def test_summarize_datalists_refuses_an_empty_required_split():
    counts = bundle.summarize_datalists(
        {"training_labeled": [{}], "training_unlabeled": []}, required="training_labeled"
    )
    assert counts == {"training_labeled": 1, "training_unlabeled": 0}
    with pytest.raises(ValueError, match="training_labeled split is empty"):
        bundle.summarize_datalists({"training_labeled": [], "training_unlabeled": [{}]}, required="training_labeled")


def test_run_record_round_trip(tmp_path):
    config = {"method": "dycon", "max_iterations": 10, "train": {"x": 1}, "path": Path("/p")}
    path = bundle.write_run_record(
        tmp_path,
        config,
        summary={"method": "dycon", "labeled_cases": 2},
        datalist={"test": []},
        seed=7,
        config_files=["train.json"],
        overrides={"max_iterations": 10},
    )
    assert path == tmp_path / bundle.RUN_INFO_FILENAME
    assert json.loads((tmp_path / bundle.CONFIG_FILENAME).read_text())["path"] == "/p"
    assert json.loads((tmp_path / bundle.DATALIST_FILENAME).read_text()) == {"test": []}
    record = bundle.read_run_record(tmp_path)
    assert record["seed"] == 7 and record["labeled_cases"] == 2 and record["overrides"] == {"max_iterations": 10}
    assert record["config_files"] == ["train.json"] and "versions" in record and record["max_iterations"] == 10
    assert "train" not in bundle.read_run_record(tmp_path, scalars_only=True)
    assert bundle.read_run_record(tmp_path / "nothing") == {}
    (tmp_path / bundle.RUN_INFO_FILENAME).write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        bundle.read_run_record(tmp_path)
