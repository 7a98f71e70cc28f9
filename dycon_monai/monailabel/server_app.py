"""The MONAI Label app that serves DyCON bundles: inference, training with unlabeled studies, entropy-driven selection.

``python -m dycon_monai.monailabel.app APP_DIR --bundle bundles/dycon_isles`` writes an app folder whose ``main.py``
is :data:`dycon_monai.monailabel.app.MAIN_PY` (a subclass of :class:`DyCONApp`) and whose ``model/<name>/`` holds the bundle. MONAI Label's own
tasks do the work: ``BundleInferTask`` for ``/infer``, :class:`~dycon_monai.monailabel.tasks.DyCONBundleTrainTask`
(a ``BundleTrainTask``) for ``/train``, plus the ``dycon_entropy`` scoring method and strategy and MONAI Label's
``random`` / ``first`` strategies.

App config keys (``--conf KEY VALUE``): ``models`` (bundle names under ``model/``, as for MONAI Label's bundle
app), ``skip_trainers``, and those of :func:`~dycon_monai.monailabel.tasks.with_dycon_active_learning`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import get_bundle_models

from dycon_monai.monailabel.tasks import (
    DyCONBundleTrainTask,
    dycon_scoring_methods,
    dycon_strategies,
    dycon_unlabeled_default,
)
from dycon_monai.utils import as_bool

__all__ = ["DyCONApp"]

logger = logging.getLogger(__name__)


class DyCONApp(MONAILabelApp):
    """MONAI Label app for the bundles in ``<app_dir>/model/`` (see the module docstring)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"DyCON bundles (MONAI Label {monailabel.__version__})",
            description="Semi-supervised DyCON bundles: inference, training with unlabeled studies, entropy ranking",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, bundle in self.models.items():
            infers[name] = BundleInferTask(bundle, self.conf)
            logger.info(f"+++ Adding Inferer:: {name} => {infers[name]}")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        if as_bool(self.conf.get("skip_trainers", "false"), "skip_trainers"):
            return trainers
        unlabeled = dycon_unlabeled_default(self)
        for name, bundle in self.models.items():
            task = DyCONBundleTrainTask(bundle, self.conf, unlabeled_default=unlabeled)
            if task.is_valid():
                trainers[name] = task
                logger.info(f"+++ Adding Trainer:: {name} => {task}")
        return trainers

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods = dycon_scoring_methods(self)
        logger.info(f"Active Learning Scoring Methods:: {list(methods)}")
        return methods

    def init_strategies(self) -> dict[str, Strategy]:
        strategies: dict[str, Any] = {"random": Random(), "first": First()}
        strategies.update(dycon_strategies(self))
        logger.info(f"Active Learning Strategies:: {list(strategies)}")
        return strategies
