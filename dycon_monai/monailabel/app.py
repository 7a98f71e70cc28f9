"""Prepare a MONAI Label app that serves a DyCON bundle (and, optionally, its active-learning strategy).

Copies MONAI Label's ``monaibundle`` sample app, places the bundle at ``<app>/model/<name>/`` (where the app looks
for local bundles) and, unless told otherwise, decorates the app class in ``main.py`` with
:func:`dycon_monai.monailabel.with_dycon_active_learning` (scoring method and strategy ``dycon_entropy``). Needs no MONAI Label import itself, so it also runs outside MONAI Label's environment when
the sample app's folder is given.

Command line::

    python -m dycon_monai.monailabel.app APP_DIR --bundle bundles/dycon_isles [--weights model.pt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

__all__ = ["find_sample_app", "prepare_app", "main"]

_IMPORT_ANCHOR = "from monailabel.interfaces.app import MONAILabelApp\n"
_CLASS_LINE = "class MyApp(MONAILabelApp):"
_DECORATOR_IMPORT = "from dycon_monai.monailabel import with_dycon_active_learning\n"
_DECORATED_CLASS = "@with_dycon_active_learning\nclass MyApp(MONAILabelApp):"


def find_sample_app(name: str = "monaibundle", prefix: str | os.PathLike | None = None) -> Path:
    """Locate a sample app shipped with the ``monailabel`` package.

    The wheel installs its sample apps as data files under ``<prefix>/monailabel/sample-apps/<name>``.

    Args:
        name: sample app name.
        prefix: environment prefix (a venv folder); default ``sys.prefix`` (the running environment).

    Returns:
        The sample app folder.

    Raises:
        FileNotFoundError: if it is not there (MONAI Label is not installed in that environment).
    """
    root = Path(prefix) if prefix is not None else Path(sys.prefix)
    candidates = [root / "monailabel" / "sample-apps" / name]
    try:  # a source checkout / editable install keeps them next to the package
        import importlib.util

        spec = importlib.util.find_spec("monailabel") if prefix is None else None
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).resolve().parent.parent / "sample-apps" / name)
    except (ImportError, ValueError):
        pass
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    raise FileNotFoundError(
        f"MONAI Label sample app {name!r} not found (looked in {', '.join(str(c) for c in candidates)}); install "
        "monailabel in that environment (`make monailabel-env`) or pass the sample app folder explicitly"
    )


def _add_active_learning(main_py: Path) -> None:
    text = main_py.read_text()
    if _DECORATED_CLASS in text:
        return
    if _IMPORT_ANCHOR not in text or _CLASS_LINE not in text:
        raise ValueError(
            f"{main_py}: expected the lines {_IMPORT_ANCHOR.strip()!r} and {_CLASS_LINE!r} of MONAI Label's "
            "monaibundle sample app; decorate the app class with `@with_dycon_active_learning` by hand "
            "(see docs/monailabel.md) or pass active_learning=False"
        )
    text = text.replace(_IMPORT_ANCHOR, _IMPORT_ANCHOR + _DECORATOR_IMPORT, 1).replace(_CLASS_LINE, _DECORATED_CLASS, 1)
    main_py.write_text(text)


def prepare_app(
    app_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    model_name: str = "dycon_isles",
    sample_app: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    active_learning: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build a MONAI Label app folder serving ``bundle_dir`` as model ``model_name``.

    Args:
        app_dir: folder to create (the app given to ``monailabel start_server --app``).
        bundle_dir: the bundle (``configs/inference.json``, ``configs/metadata.json``, optionally
            ``configs/train.json`` and ``models/model.pt``).
        model_name: the model name (``--conf models NAME``, ``/infer/NAME``).
        sample_app: the ``monaibundle`` sample app folder; default: :func:`find_sample_app` in this environment.
        weights: a state dict of the bundle's ``network_def`` to install as ``models/model.pt``; without it the
            bundle must already contain ``models/model.pt`` (MONAI Label skips a bundle without weights).
        active_learning: decorate the app class with :func:`~dycon_monai.monailabel.with_dycon_active_learning`
            (the app's environment then needs ``dycon_monai`` installed).
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

    src = Path(sample_app) if sample_app is not None else find_sample_app()
    if not (src / "main.py").is_file():
        raise FileNotFoundError(f"{src} is not a MONAI Label app (no main.py)")
    if app.exists():
        if not overwrite:
            raise FileExistsError(f"{app} exists; pass overwrite=True (--force) to replace it")
        shutil.rmtree(app)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "model", "logs")
    shutil.copytree(src, app, ignore=ignore)
    if active_learning:
        _add_active_learning(app / "main.py")

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
        description="Create a MONAI Label app (from the monaibundle sample app) that serves a DyCON bundle.",
    )
    parser.add_argument("app_dir", help="folder to create")
    parser.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/dycon_isles")
    parser.add_argument("--name", default="dycon_isles", help="model name (default: dycon_isles)")
    parser.add_argument("--weights", default=None, help="state dict of network_def to use as models/model.pt")
    parser.add_argument("--sample-app", default=None, help="monaibundle sample app folder (default: auto)")
    parser.add_argument("--no-active-learning", action="store_true", help="do not add the dycon_entropy strategy")
    parser.add_argument("--force", action="store_true", help="replace app_dir if it exists")
    args = parser.parse_args(argv)
    app = prepare_app(
        args.app_dir,
        args.bundle,
        model_name=args.name,
        sample_app=args.sample_app,
        weights=args.weights,
        active_learning=not args.no_active_learning,
        overwrite=args.force,
    )
    print(f"MONAI Label app ready: {app}")
    print(
        "start it with:\n"
        f"  BUNDLE_DOWNLOAD_SRC=github monailabel start_server --app {app} --studies STUDIES_DIR "
        f"--conf models {args.name} --conf sam2 false"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
