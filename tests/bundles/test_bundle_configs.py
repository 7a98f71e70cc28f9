"""The dycon_isles bundle configs parse, follow the model-zoo layout and expose what MONAI Label reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose, Invertd, LoadImaged, SaveImaged

from dycon_monai.bundle import DyconWorkflow

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "dycon_isles"
CONFIGS = BUNDLE / "configs"


def _parser(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    return parser


def test_bundle_layout():
    for name in ("metadata.json", "train.json", "inference.json", "evaluate.json", "multi_gpu_train.json", "demo.json"):
        json.loads((CONFIGS / name).read_text())
    assert (CONFIGS / "logging.conf").is_file()
    assert (BUNDLE / "docs" / "README.md").is_file()
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()


def test_metadata_fields():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "references",
        "intended_use",
    ):
        assert meta.get(key), key
    assert meta["version"] in meta["changelog"]
    assert any("DyCON" in r and "CVPR" in r for r in meta["references"])
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["dtype"] == "float32" and image["spatial_shape"] == [96, 96, 64]
    assert pred["num_channels"] == 2 and pred["channel_def"] == {"0": "background", "1": "lesion"}


@pytest.mark.parametrize(
    "names",
    [
        ("train.json",),
        ("train.json", "evaluate.json"),
        ("train.json", "multi_gpu_train.json"),
        ("train.json", "demo.json"),
        ("train.json", "demo.json", "evaluate.json"),
        ("inference.json",),
        ("inference.json", "demo.json"),
    ],
)
def test_configs_parse(names, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DyconWorkflow takes bundle_root "." relative to the bundle, not the working dir
    parser = DyconWorkflow(config_file=[str(CONFIGS / n) for n in names], logging_file=False).parser
    parser.parse()
    for key in ("bundle_root", "device", "network_def", "initialize", "run"):
        assert key in parser, key
    assert Path(parser.get_parsed_content("bundle_root")) == BUNDLE


def test_train_config_follows_model_zoo_ids():
    parser = _parser("train.json")
    for key in (
        "dataset_dir",
        "output_dir",
        "fold",
        "labeled_fraction",
        "seed",
        "method",
        "max_iterations",
        "batch_size",
        "patch_size",
        "val_interval",
        "pixdim",
        "learning_rate",
        "network",
        "train#network",
        "train#dataset#data",
        "train#unlabeled_dataset#data",
        "train#handlers",
        "train#trainer",
        "train#trainer#max_epochs",
        "validate#dataset#data",
        "validate#handlers",
        "validate#inferer",
        "validate#key_metric",
        "validate#evaluator",
    ):
        assert key in parser, key
    assert isinstance(parser["train#handlers"], list)  # MONAI Label inserts its CheckpointLoader here ...
    assert all(isinstance(h, dict) for h in parser["train#handlers"])  # ... after reading every entry's _target_
    assert parser["train#trainer#_target_"] == "dycon_monai.engines.MeanTeacherTrainer"
    assert parser["train#network#_target_"] == "dycon_monai.networks.DyCONNet"
    assert parser["network_def#_target_"] == "UNet"


def test_network_def_matches_metadata_and_train():
    infer, train = _parser("inference.json"), _parser("train.json")
    assert infer["network_def"] == train["network_def"]
    assert infer["patch_size"] == train["patch_size"] and infer["pixdim"] == train["pixdim"]
    net = infer.get_parsed_content("network_def")
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 96, 96, 64))
    assert out.shape == (1, 2, 96, 96, 64)


def test_inference_keys_for_monai_label():
    """BundleInferTask reads bundle_root, device, network_def, preprocessing, inferer, postprocessing."""
    parser = _parser("inference.json")
    parser["bundle_root"] = str(BUNDLE)
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    assert isinstance(pre, Compose) and isinstance(pre.transforms[0], LoadImaged)
    assert isinstance(parser.get_parsed_content("inferer"), SlidingWindowInferer)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    kinds = [type(t) for t in post.transforms]
    assert Invertd in kinds and SaveImaged in kinds
    assert isinstance(parser.get_parsed_content("network_def"), torch.nn.Module)
    assert isinstance(parser.get_parsed_content("device"), torch.device)
    assert parser.get_parsed_content("model_path") == str(BUNDLE / "models" / "model.pt")


def test_methods_resolve_to_loss_weights():
    parser = _parser("train.json")
    for method, active in (
        ("supervised", set()),
        ("mean_teacher", {"consistency_weight"}),
        ("mt_uncl", {"uncl_weight"}),
        ("dycon", {"uncl_weight", "fecl_weight"}),
    ):
        parser["method"] = method
        parser.parse()
        weights = parser.get_parsed_content("method_config")
        assert {k for k, v in weights.items() if v > 0} == active, method
    parser["method"] = "fixmatch"
    parser.parse()
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("method_config")
    text = repr(err.value) + repr(err.value.__cause__)
    assert "fixmatch" in text and "supervised" in text and "dycon" in text


def test_demo_overrides_only_top_level_and_network():
    demo = json.loads((CONFIGS / "demo.json").read_text())
    train = _parser("train.json")
    for key in demo:
        assert key in train, f"demo.json sets {key!r}, which train.json does not define"


@pytest.mark.parametrize(
    "bundle, name",
    [(b, n) for b in ("dycon_isles", "dycon_la") for n in ("train.json", "evaluate.json", "inference.json")],
)
def test_initialize_is_short_and_every_config_names_the_workflow(bundle, name):
    config = json.loads((BUNDLE.parent / bundle / "configs" / name).read_text())
    assert len(config["initialize"]) <= 3
    assert config["initialize"][0] == "$dycon_monai.bundle.require_workflow(@workflow_class)"
    assert "finalize" not in config  # DyconWorkflow publishes the model and closes the log


def test_unlabeled_stream_is_explicit_and_multi_gpu_only_adds_distributed_lines():
    train = json.loads((CONFIGS / "train.json").read_text())
    assert train["train"]["unlabeled_dataset"]["data"] == "$@datalist['training_unlabeled']"
    multi = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    added = [line for line in multi["initialize"] if line not in train["initialize"]]
    assert [line for line in multi["initialize"] if line in train["initialize"]] == train["initialize"]
    assert all("dist." in line or "torch.cuda" in line for line in added), added


@pytest.mark.parametrize("bundle", ["dycon_isles", "dycon_la"])
def test_model_zoo_files(bundle):
    root = BUNDLE.parent / bundle
    assert "large_files.yml" in (root / "models" / "README.md").read_text()  # why there is none
    assert (root / "docs" / "data_license.txt").read_text().strip()
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"].get("protocol") and any(isinstance(v, float) for v in meta["eval_metrics"].values())
    headings = [line for line in (root / "docs" / "README.md").read_text().splitlines() if line.startswith("#")]
    for section in ("# Model Overview", "## Data", "## Training configuration", "## Input", "## Output"):
        assert section in headings, section
    for section in ("## Performance", "## MONAI Bundle Commands", "## References", "# License"):
        assert section in headings, section
