"""Run directories, override checks and dataset checks of the dycon_isles bundle (dycon_monai.utils.run_dir)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dycon_monai.utils import run_dir as rd

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "dycon_isles"
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
MAIN = "/usr/lib/python3/site-packages/monai/bundle/__main__.py"


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
    assert rd.as_bool(value) is expected


def test_as_bool_rejects_other_values():
    with pytest.raises(ValueError, match="overwrite must be true or false, got 'maybe'"):
        rd.as_bool("maybe", "overwrite")


def test_new_run_dirs_never_collide(tmp_path):
    first = Path(rd.create_run_dir(tmp_path, prefix="dycon"))
    second = Path(rd.create_run_dir(tmp_path, prefix="dycon"))
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.startswith("dycon_") and first.parent == tmp_path


def test_named_run_dir_refuses_earlier_outputs(tmp_path):
    run = Path(rd.create_run_dir(tmp_path, name="exp"))
    (run / rd.RUN_INFO_FILENAME).write_text("{}")
    (run / "model.pt").write_text("weights")
    with pytest.raises(FileExistsError, match=r"already holds the outputs of an earlier run .*--overwrite true"):
        rd.create_run_dir(tmp_path, name="exp")
    assert (run / "model.pt").read_text() == "weights"  # untouched
    again = Path(rd.create_run_dir(tmp_path, name="exp", overwrite="true"))
    assert again == run and list(again.iterdir()) == []


def test_overwrite_never_deletes_a_foreign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.nii.gz").write_text("x")
    with pytest.raises(FileExistsError, match="not a run directory of this bundle"):
        rd.create_run_dir(tmp_path, name="data", overwrite=True)
    assert (tmp_path / "data" / "scan.nii.gz").exists()


def test_empty_named_dir_is_reused(tmp_path):
    (tmp_path / "exp").mkdir()
    assert Path(rd.create_run_dir(tmp_path, name="exp")) == tmp_path / "exp"


def _argv(*extra: str, config: str = TRAIN) -> list[str]:
    return [MAIN, "run", "--config_file", config, *extra]


def test_check_overrides_accepts_defined_keys():
    keys = rd.check_overrides(
        _argv("--dataset_dir", "/d", "--max_iterations=10", "--train#trainer#amp", "true", "--overwrite")
    )
    assert keys == ["dataset_dir", "max_iterations", "train#trainer#amp", "overwrite"]


def test_check_overrides_rejects_typo_with_suggestion():
    with pytest.raises(
        ValueError, match=r"--max_iteration: not defined in .*train.json\. Did you mean --max_iterations"
    ):
        rd.check_overrides(_argv("--max_iteration", "10"))


def test_check_overrides_rejects_unknown_nested_parent():
    with pytest.raises(ValueError, match="--trian#trainer#amp"):
        rd.check_overrides(_argv("--trian#trainer#amp", "true"))


def test_check_overrides_merges_config_list():
    configs = repr([TRAIN, EVALUATE])
    assert rd.check_overrides(_argv("--model_path", "m.pt", "--split", "test", config=configs)) == [
        "model_path",
        "split",
    ]
    with pytest.raises(ValueError, match="--split"):
        rd.check_overrides(_argv("--split", "test"))  # evaluate.json's key, not train.json's


def test_check_overrides_ignores_other_programs():
    assert rd.check_overrides(["monailabel", "start_server", "--conf", "models", "x"]) == []


def test_check_dataset_message_names_layout_and_demo(tmp_path):
    with pytest.raises(rd.DatasetNotFoundError) as err:
        rd.check_dataset(tmp_path / "missing")
    text = str(err.value)
    assert "does not exist" in text and "rawdata/sub-strokecase0001/ses-0001/dwi" in text
    assert "derivatives/" in text and "make demo" in text and "--dataset_dir" in text
    (tmp_path / "rawdata").mkdir()
    with pytest.raises(rd.DatasetNotFoundError, match="no DWI images"):
        rd.check_dataset(tmp_path)


def test_check_dataset_accepts_cohort(synthetic_cohort):
    assert rd.check_dataset(synthetic_cohort) == str(Path(synthetic_cohort).absolute())


def test_find_images(tmp_path, synthetic_cohort):
    items = rd.find_images(synthetic_cohort)
    assert len(items) == 12 and all(i["image"].endswith("_dwi.nii.gz") for i in items)
    assert rd.find_images(items[0]["image"]) == [items[0]]
    with pytest.raises(FileNotFoundError, match="No image matching"):
        rd.find_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rd.find_images(tmp_path / "nowhere")


def test_check_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Model weights not found.*--model_path"):
        rd.check_model_path(tmp_path / "model.pt")


def test_training_run_info_reads_the_run(tmp_path):
    run = tmp_path / "dycon_1"
    (run / "models").mkdir(parents=True)
    (run / rd.RUN_INFO_FILENAME).write_text(json.dumps({"method": "mt_uncl", "labeled_fraction": 0.2, "seed": 3}))
    info = rd.training_run_info(run / "models" / "model.pt", method="dycon", dataset="synthetic")
    assert info["method"] == "mt_uncl" and info["labeled_fraction"] == 0.2 and info["dataset"] == "synthetic"
    assert info["training_run"] == str(run.absolute())
    assert rd.training_run_info(tmp_path / "x.pt", method="dycon")["training_run"] is None


def test_summarize_datalists_refuses_empty_labeled_set():
    assert rd.summarize_datalists(labeled=[{}], unlabeled=[]) == {"labeled": 1, "unlabeled": 0}
    with pytest.raises(ValueError, match="labeled training set is empty"):
        rd.summarize_datalists(labeled=[], unlabeled=[{}])


def test_save_run_config_outside_a_bundle(tmp_path):
    rd.save_run_config(tmp_path, seed=7, resolved={"method": "dycon"}, datalist={"test": []})
    info = json.loads((tmp_path / rd.RUN_INFO_FILENAME).read_text())
    assert info["seed"] == 7 and info["method"] == "dycon" and "versions" in info
    assert json.loads((tmp_path / "datalist.json").read_text()) == {"test": []}


def test_error_summary_names_the_root_cause(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("sys.excepthook", lambda *args: calls.append(args))
    rd.install_error_summary()
    rd.install_error_summary()  # idempotent
    try:
        try:
            raise rd.DatasetNotFoundError("No readable ISLES'22 dataset: x")
        except rd.DatasetNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        sys.excepthook(type(outer), outer, outer.__traceback__)
    assert len(calls) == 1  # the previous hook printed the traceback once
    assert capsys.readouterr().err.strip() == "error: DatasetNotFoundError: No readable ISLES'22 dataset: x"
