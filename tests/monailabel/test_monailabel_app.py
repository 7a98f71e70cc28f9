"""prepare_app: copying the monaibundle sample app, placing the bundle, adding the active-learning decorator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dycon_monai.monailabel.app import find_sample_app, main, prepare_app

FAKE_MAIN = """import os
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.strategy import Strategy


class MyApp(MONAILabelApp):
    pass
"""


@pytest.fixture()
def sample_app(tmp_path: Path) -> Path:
    app = tmp_path / "sample" / "monaibundle"
    (app / "lib" / "infers").mkdir(parents=True)
    (app / "main.py").write_text(FAKE_MAIN)
    (app / "lib" / "__init__.py").write_text("")
    (app / "__pycache__").mkdir()
    return app


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    b = tmp_path / "bundle"
    (b / "configs").mkdir(parents=True)
    (b / "configs" / "inference.json").write_text(json.dumps({"network_def": {}}))
    (b / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0"}))
    return b


def test_prepare_app_places_bundle_and_decorates_app(tmp_path, sample_app, bundle):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    app = prepare_app(tmp_path / "app", bundle, sample_app=sample_app, weights=weights)
    main_py = (app / "main.py").read_text()
    assert "from dycon_monai.monailabel import with_dycon_active_learning" in main_py
    assert "@with_dycon_active_learning\nclass MyApp(MONAILabelApp):" in main_py
    compile(main_py, "main.py", "exec")
    assert (app / "lib" / "__init__.py").is_file() and not (app / "__pycache__").exists()
    model = app / "model" / "dycon_isles"
    assert (model / "configs" / "inference.json").is_file()
    assert (model / "models" / "model.pt").read_bytes() == b"weights"
    # the sample app itself is untouched
    assert (sample_app / "main.py").read_text() == FAKE_MAIN


def test_prepare_app_without_active_learning_and_overwrite(tmp_path, sample_app, bundle):
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"w")
    app = prepare_app(tmp_path / "app", bundle, model_name="m", sample_app=sample_app, active_learning=False)
    assert (app / "main.py").read_text() == FAKE_MAIN
    assert (app / "model" / "m" / "models" / "model.pt").is_file()
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_app(tmp_path / "app", bundle, sample_app=sample_app)
    prepare_app(tmp_path / "app", bundle, sample_app=sample_app, overwrite=True)
    assert "@with_dycon_active_learning" in (tmp_path / "app" / "main.py").read_text()


def test_prepare_app_errors(tmp_path, sample_app, bundle):
    with pytest.raises(FileNotFoundError, match="models/model.pt"):
        prepare_app(tmp_path / "a", bundle, sample_app=sample_app)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_app(tmp_path / "a", bundle, sample_app=sample_app, weights=tmp_path / "missing.pt")
    (bundle / "configs" / "inference.json").unlink()
    with pytest.raises(FileNotFoundError, match="inference.json"):
        prepare_app(tmp_path / "a", bundle, sample_app=sample_app, weights=tmp_path / "missing.pt")
    (bundle / "configs" / "inference.json").write_text("{}")
    (sample_app / "main.py").write_text("class Other:\n    pass\n")
    (tmp_path / "w.pt").write_bytes(b"w")
    with pytest.raises(ValueError, match="by hand"):
        prepare_app(tmp_path / "b", bundle, sample_app=sample_app, weights=tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="monailabel-env"):
        find_sample_app(prefix=tmp_path / "no-venv")


def test_command_line(tmp_path, sample_app, bundle, capsys):
    (tmp_path / "w.pt").write_bytes(b"w")
    args = [str(tmp_path / "app"), "--bundle", str(bundle), "--weights", str(tmp_path / "w.pt")]
    rc = main(args + ["--sample-app", str(sample_app)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "monailabel start_server" in out and "--conf models dycon_isles" in out
    # runnable as a module too
    help_text = subprocess.run(
        [sys.executable, "-m", "dycon_monai.monailabel.app", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--bundle" in help_text
