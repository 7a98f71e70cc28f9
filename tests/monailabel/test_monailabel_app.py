"""prepare_app: our own app main.py, the bundle placed where MONAI Label looks, no MONAI Label file copied or edited."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dycon_monai.monailabel.app import MAIN_PY, main, prepare_app


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "configs").mkdir(parents=True)
    (b / "configs" / "inference.json").write_text(json.dumps({"network_def": {}}))
    (b / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    (b / "__pycache__").mkdir()
    return b


def test_prepare_app_writes_our_main_and_places_the_bundle(tmp_path, bundle):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    app = prepare_app(tmp_path / "app", bundle, weights=weights)
    assert sorted(p.name for p in app.iterdir()) == ["main.py", "model"]
    assert (app / "main.py").read_text() == MAIN_PY
    tree = ast.parse(MAIN_PY)
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    # MONAI Label starts the class of main.py that has MONAILabelApp among its direct bases
    assert len(classes) == 1 and [b.id for b in classes[0].bases] == ["DyCONApp", "MONAILabelApp"]
    model = app / "model" / "dycon_isles"
    assert (model / "configs" / "inference.json").is_file() and not (model / "__pycache__").exists()
    assert (model / "models" / "model.pt").read_bytes() == b"weights"


def test_prepare_app_overwrite(tmp_path, bundle):
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"w")
    app = prepare_app(tmp_path / "app", bundle, model_name="m")
    assert (app / "model" / "m" / "models" / "model.pt").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_app(tmp_path / "app", bundle)
    (app / "stale.txt").write_text("x")
    prepare_app(tmp_path / "app", bundle, overwrite=True)
    assert not (app / "stale.txt").exists()


def test_prepare_app_errors(tmp_path, bundle):
    with pytest.raises(FileNotFoundError, match="models/model.pt"):
        prepare_app(tmp_path / "a", bundle)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_app(tmp_path / "a", bundle, weights=tmp_path / "missing.pt")
    (tmp_path / "w.pt").write_bytes(b"w")
    with pytest.raises(ValueError, match="plain folder name"):
        prepare_app(tmp_path / "a", bundle, model_name="../x", weights=tmp_path / "w.pt")
    (bundle / "configs" / "inference.json").unlink()
    with pytest.raises(FileNotFoundError, match="inference.json"):
        prepare_app(tmp_path / "a", bundle, weights=tmp_path / "w.pt")


def test_command_line(tmp_path, bundle, capsys):
    (tmp_path / "w.pt").write_bytes(b"w")
    rc = main([str(tmp_path / "app"), "--bundle", str(bundle), "--weights", str(tmp_path / "w.pt")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "monailabel start_server" in out and "--conf models dycon_isles" in out
    help_text = subprocess.run(
        [sys.executable, "-m", "dycon_monai.monailabel.app", "--help"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    ).stdout
    assert "--bundle" in help_text
