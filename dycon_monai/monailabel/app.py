"""Prepare a MONAI Label app folder that serves DyCON bundles.

The app is ours: its ``main.py`` (:data:`MAIN_PY`) starts :class:`dycon_monai.monailabel.server_app.DyCONApp`, and the
bundle is copied to ``<app>/model/<name>/``, where MONAI Label looks for local bundles. Nothing of MONAI Label's
sample apps is copied or edited, and this module imports no MONAI Label code, so it also runs outside MONAI Label's
environment.

Command line::

    python -m dycon_monai.monailabel.app APP_DIR --bundle bundles/dycon_isles [--weights model.pt]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from dycon_monai.utils.io import atomic_write_text

__all__ = ["MAIN_PY", "main", "prepare_app"]

#: the ``main.py`` of a prepared app: MONAI Label starts the class in it that has ``MONAILabelApp`` as a direct base
MAIN_PY = '''"""MONAI Label app serving the DyCON bundles in ./model/ (written by `python -m dycon_monai.monailabel.app`)."""

from monailabel.interfaces.app import MONAILabelApp

from dycon_monai.monailabel.server_app import DyCONApp


class App(DyCONApp, MONAILabelApp):
    """dycon_monai.monailabel.server_app.DyCONApp, as MONAI Label loads it from this file."""
'''


def prepare_app(
    app_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    model_name: str = "dycon_isles",
    weights: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Build a MONAI Label app folder serving ``bundle_dir`` as model ``model_name``.

    Args:
        app_dir: folder to create (the app given to ``monailabel start_server --app``).
        bundle_dir: the bundle (``configs/inference.json``, ``configs/metadata.json``, optionally
            ``configs/train.json`` and ``models/model.pt``).
        model_name: the model name (``--conf models NAME``, ``/infer/NAME``).
        weights: a state dict of the bundle's ``network_def`` to install as ``models/model.pt``; without it the
            bundle must already contain ``models/model.pt`` (MONAI Label skips a bundle without weights).
        overwrite: replace an existing ``app_dir``.

    Returns:
        ``app_dir`` as a Path.

    Raises:
        FileExistsError: ``app_dir`` exists and ``overwrite`` is False.
        FileNotFoundError: a bundle config or the weights are missing.
    """
    app = Path(app_dir)
    bundle = Path(bundle_dir)
    for required in ("configs/inference.json", "configs/metadata.json"):
        if not (bundle / required).is_file():
            raise FileNotFoundError(f"bundle {bundle}: missing {required}; MONAI Label's BundleInferTask needs it")
    if weights is None and not (bundle / "models" / "model.pt").is_file():
        raise FileNotFoundError(
            f"bundle {bundle}: no models/model.pt and no weights given; MONAI Label ignores a bundle without weights "
            "(pass weights=PATH to a state dict of the bundle's network_def)"
        )
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"weights file {weights} does not exist")
    if not model_name or os.sep in model_name or model_name.startswith("."):
        raise ValueError(f"model_name must be a plain folder name, got {model_name!r}")
    if app.exists():
        if not overwrite:
            raise FileExistsError(f"{app} exists; pass overwrite=True (--force) to replace it")
        shutil.rmtree(app)
    app.mkdir(parents=True)
    atomic_write_text(app / "main.py", MAIN_PY)
    target = app / "model" / model_name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "eval", "logs", "runs"))
    if weights is not None:
        (target / "models").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(weights, target / "models" / "model.pt")
    return app


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m dycon_monai.monailabel.app",
        description="Create a MONAI Label app that serves a DyCON bundle.",
    )
    parser.add_argument("app_dir", help="folder to create")
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/dycon_isles")
    parser.add_argument("--name", default="dycon_isles", help="model name (default: dycon_isles)")
    parser.add_argument("--weights", default=None, help="state dict of network_def to use as models/model.pt")
    parser.add_argument("--force", action="store_true", help="replace app_dir if it exists")
    args = parser.parse_args(argv)
    app = prepare_app(args.app_dir, args.bundle, model_name=args.name, weights=args.weights, overwrite=args.force)
    print(f"MONAI Label app ready: {app}")
    print(f"start it with:\n  monailabel start_server --app {app} --studies STUDIES_DIR --conf models {args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
