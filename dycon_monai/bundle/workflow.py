"""``DyconWorkflow``: the MONAI bundle workflow every train, evaluate and inference run of these bundles goes through.

A :class:`monai.bundle.ConfigWorkflow` that adds, around the config's own ``initialize`` / ``run`` / ``finalize``:

- ``__init__``: every override key is checked against the config files (a typo stops the run instead of being
  added as a new, unused key), and a relative ``bundle_root`` (the configs say ``"."``, as model-zoo bundles do) is
  taken relative to the bundle folder, so that a run works from any working directory.
- ``initialize``: the run folder (``run_dir``) is created, the log is also written to ``<run_dir>/log.txt`` and the
  run record (``config.json``, ``run_info.json``, ``datalist.json``; see :mod:`dycon_monai.utils.run_record`) is
  written, after the config's own ``initialize`` (which sets up ``torch.distributed`` in a multi-GPU run).
- ``run``: an error is logged with its root cause (MONAI wraps errors of config expressions and transforms, so the
  last line of a traceback hides e.g. which file is unreadable) and re-raised unchanged.
- ``finalize``: the trained weights are published to ``<bundle_root>/models/model.pt`` when
  ``publish_model_to_bundle`` is true, then the config's own ``finalize`` runs and the log file is closed.

Run it like any bundle workflow::

    python -m monai.bundle run --config_file bundles/dycon_isles/configs/train.json \\
        --workflow_name dycon_monai.bundle.DyconWorkflow --dataset_dir DIR

or ``monai.bundle.run_workflow(workflow_name="dycon_monai.bundle.DyconWorkflow", config_file=...)``, or build it in
Python (``DyconWorkflow(config_file=..., max_iterations=100)``, then ``initialize()``, ``run()``, ``finalize()``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import ensure_tuple

from dycon_monai.bundle.models import publish_model
from dycon_monai.bundle.overrides import TRACKING_KEYS, check_override_keys
from dycon_monai.bundle.run_dir import make_run_dir
from dycon_monai.utils.dist import rank_and_world_size
from dycon_monai.utils.flags import as_bool
from dycon_monai.utils.run_record import summarize_datalists, write_run_record

__all__ = ["WORKFLOW_KEY", "WORKFLOW_NAME", "DyconWorkflow", "require_workflow"]

logger = logging.getLogger(__name__)

# config id that DyconWorkflow fills with its class path; the configs' `initialize` checks it (require_workflow)
WORKFLOW_KEY = "workflow_class"
# what `--workflow_name` takes
WORKFLOW_NAME = "dycon_monai.bundle.DyconWorkflow"
LOG_FILENAME = "log.txt"


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def require_workflow(workflow_class: str | None) -> str:
    """Stop a bundle run that was not started through :class:`DyconWorkflow` (the configs call this first).

    Raises:
        RuntimeError: ``workflow_class`` is empty, i.e. the run uses MONAI's plain ``ConfigWorkflow``.
    """
    if not workflow_class:
        raise RuntimeError(
            f"This bundle runs through {WORKFLOW_NAME}, which checks the override keys, creates the run folder, its "
            f"record and log, and publishes the model. Add `--workflow_name {WORKFLOW_NAME}` to `python -m "
            f"monai.bundle run`, or pass workflow_name='{WORKFLOW_NAME}' to monai.bundle.run / run_workflow / "
            "create_workflow."
        )
    return str(workflow_class)


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ or exc.__context__
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


class DyconWorkflow(ConfigWorkflow):
    """ConfigWorkflow with the run folder, run record, log file, override check and model publishing of a run.

    Config ids it reads (each optional unless noted): ``run_dir`` (required: the planned run folder,
    ``$dycon_monai.bundle.plan_run_dir(...)``), ``run_name`` and ``overwrite`` (rules for a named run folder),
    ``run_summary`` (dict: the top level of ``run_info.json``), ``run_datalist`` (dict: split name -> items,
    logged and saved), ``seed``, ``publish_model_to_bundle`` with ``ckpt_dir``, ``bundle_root`` and ``network``,
    and :data:`WORKFLOW_KEY`. The arguments are those of :class:`monai.bundle.ConfigWorkflow`.

    Raises:
        ValueError: an override key is not defined by the config files.
    """

    def __init__(
        self,
        config_file: str | Sequence[str],
        meta_file: str | Sequence[str] | None = None,
        logging_file: str | bool | None = None,
        init_id: str = "initialize",
        run_id: str = "run",
        final_id: str = "finalize",
        tracking: str | dict | None = None,
        workflow_type: str | None = "train",
        properties_path: str | os.PathLike | None = None,
        **override: Any,
    ) -> None:
        files = [str(f) for f in ensure_tuple(config_file)]
        check_override_keys(
            ConfigParser.load_config_files(files),
            override.keys(),
            files,
            allowed=TRACKING_KEYS if tracking is not None else (),
        )
        super().__init__(
            config_file=config_file,
            meta_file=meta_file,
            logging_file=logging_file,
            init_id=init_id,
            run_id=run_id,
            final_id=final_id,
            tracking=tracking,
            workflow_type=workflow_type,
            properties_path=properties_path,
            **override,
        )
        self.config_files = files
        self.overrides = dict(override)
        self.run_dir: str | None = None
        self._log_handler: logging.Handler | None = None
        root = Path(self.config_root_path).absolute()
        self.bundle_dir = root.parent if root.name == "configs" else root
        value = self.parser.get("bundle_root")
        if "bundle_root" not in override and isinstance(value, str) and not value.startswith(("$", "@", "%")):
            if not os.path.isabs(value):
                self.parser["bundle_root"] = str((self.bundle_dir / value).resolve())
        self._workflow_key_default = self.parser.get(WORKFLOW_KEY)
        if WORKFLOW_KEY in self.parser:
            self.parser[WORKFLOW_KEY] = _class_path(type(self))

    # ----------------------------------------------------------------------------------------------- helpers
    def _get(self, config_id: str, default: Any = None) -> Any:
        return self.parser.get_parsed_content(config_id) if config_id in self.parser else default

    def _open_log(self, run_dir: str) -> None:
        if self._log_handler is not None or rank_and_world_size()[0] != 0:
            return
        handler = logging.FileHandler(Path(run_dir) / LOG_FILENAME)
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        self._log_handler = handler

    def close_log(self) -> None:
        """Detach and close the run's log file (``finalize`` and a failed step do this)."""
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    def _failed(self, err: BaseException) -> None:
        root = _root_cause(err)
        logger.error("error: %s: %s", type(root).__name__, root)
        self.close_log()

    def _recorded_config(self) -> dict[str, Any]:
        config = dict(self.parser.get())
        if WORKFLOW_KEY in config:  # re-running config.json must name the workflow again
            config[WORKFLOW_KEY] = self._workflow_key_default
        return config

    # ----------------------------------------------------------------------------------------------- steps
    def initialize(self) -> Any:
        """Parse the config and run its ``initialize``; then create the run folder, its log file and run record.

        The run's summary and datalists are resolved before the folder is created, so that a bad dataset, method or
        override stops the run before anything is written.
        """
        try:
            result = super().initialize()
            if "run_dir" not in self.parser:
                raise KeyError(f"{', '.join(self.config_files)}: DyconWorkflow needs a `run_dir` config id.")
            summary = self._get("run_summary")
            datalist = self._get("run_datalist")
            if datalist is not None:
                summarize_datalists(datalist, required="training_labeled" if "training_labeled" in datalist else None)
            self.run_dir = make_run_dir(
                self._get("run_dir"), name=self._get("run_name"), overwrite=self._get("overwrite", False)
            )
            self._open_log(self.run_dir)
            write_run_record(
                self.run_dir,
                config=self._recorded_config(),
                summary=summary,
                datalist=datalist,
                seed=self._get("seed"),
                config_files=self.config_files,
                overrides=self.overrides,
            )
        except Exception as err:
            self._failed(err)
            raise
        return result

    def run(self) -> Any:
        """Run the config's ``run``; an error is logged with its root cause and re-raised."""
        try:
            return super().run()
        except Exception as err:
            self._failed(err)
            raise

    def finalize(self) -> Any:
        """Publish the model (when asked to), run the config's ``finalize`` and close the log file."""
        try:
            if as_bool(self._get("publish_model_to_bundle", False), "publish_model_to_bundle"):
                publish_model(
                    self._get("ckpt_dir"), self._get("bundle_root"), enabled=True, network=self._get("network")
                )
            return super().finalize()
        except Exception as err:
            self._failed(err)
            raise
        finally:
            self.close_log()
