"""MONAI Label tasks for uncertainty-driven active learning with a DyCON bundle.

This module needs MONAI Label (``pip install monailabel``; see ``docs/monailabel.md`` for the separate environment)
and is imported lazily by :mod:`dycon_monai.monailabel`, so ``import dycon_monai`` never needs it.

- :class:`DyCONEntropyScoring` (a MONAI Label ``ScoringMethod``) runs the bundle's inference on every unlabeled
  study and stores its mean voxel entropy (:func:`dycon_monai.monailabel.entropy.mean_voxel_entropy`) in the
  datastore under ``key`` (default ``"dycon_entropy"``).
- :class:`MostUncertainStrategy` (a MONAI Label ``Strategy``) hands out the unlabeled study with the highest stored
  score next.
- :class:`DyCONBundleTrainTask` (a MONAI Label ``BundleTrainTask``) also hands the bundle the datastore's
  unlabeled studies as DyCON's unlabeled stream, and has the bundle publish its trained weights to
  ``<bundle>/models/model.pt``, the file MONAI Label serves.
- :func:`with_dycon_active_learning` (class decorator) or :class:`DyCONActiveLearningMixin` adds them to a MONAI
  Label app (e.g. the ``monaibundle`` sample app's ``MyApp``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask, CallBackTypes
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import name_to_device

from dycon_monai.bundle.workflow import WORKFLOW_NAME
from dycon_monai.monailabel.entropy import mean_voxel_entropy, most_uncertain, rank_by_entropy
from dycon_monai.utils.flags import as_bool

__all__ = [
    "DEFAULT_KEY",
    "DyCONEntropyScoring",
    "MostUncertainStrategy",
    "DyCONBundleTrainTask",
    "DyCONActiveLearningMixin",
    "with_dycon_active_learning",
    "dycon_scoring_method",
    "dycon_scoring_methods",
    "dycon_strategies",
    "dycon_trainers",
    "dycon_unlabeled_default",
    "UNLABELED_KEY",
    "PUBLISH_KEY",
]

logger = logging.getLogger(__name__)

DEFAULT_KEY = "dycon_entropy"
UNLABELED_KEY = "train#unlabeled_dataset#data"
PUBLISH_KEY = "publish_model_to_bundle"


class DyCONEntropyScoring(ScoringMethod):
    """Score unlabeled studies by the mean voxel entropy of the model's softmax probabilities.

    For every unlabeled study in the datastore, the wrapped inference task (normally a ``BundleInferTask`` built on
    the DyCON bundle, with ``skip_writer=True``) runs its pre-processing and inferer; the network output is turned
    into the study's score and saved in the study's info as ``{key: score, key + "_ts": model_mtime}``. Studies
    already scored with the current model file are skipped unless the request says ``"force": true``.

    Request keys (all optional): ``device`` (default: CUDA if available, else CPU), ``max_samples`` (score at most
    this many studies; 0 = all), ``force``.

    Args:
        infer_task: MONAI Label inference task whose inferer output (``infer_task.output_label_key``) holds the
            network output (logits) of shape ``(C, *spatial)``.
        key: datastore info key for the score.
        activation: ``"softmax"`` (DyCON), ``"sigmoid"`` or ``"none"``; see
            :func:`dycon_monai.monailabel.entropy.voxel_entropy`.
        normalize: divide the entropy by ``log C`` so that scores lie in ``[0, 1]``.
        top_fraction: average only the most uncertain fraction of voxels (``None`` = all voxels).
        max_samples: default for the request's ``max_samples``.
    """

    def __init__(
        self,
        infer_task: BasicInferTask,
        key: str = DEFAULT_KEY,
        activation: str = "softmax",
        normalize: bool = True,
        top_fraction: float | None = None,
        max_samples: int = 0,
    ) -> None:
        super().__init__(f"Mean voxel entropy (DyCON) of {getattr(infer_task, 'description', None) or 'the model'}")
        self.infer_task = infer_task
        self.key = key
        self.key_ts = f"{key}_ts"
        self.activation = activation
        self.normalize = normalize
        self.top_fraction = top_fraction
        self.max_samples = max_samples

    def info(self) -> dict[str, Any]:
        i = super().info()
        i.update({"key": self.key, "activation": self.activation, "normalize": self.normalize})
        return i

    def model_ts(self) -> int:
        """Modification time of the model file (0 when there is none), used to tell stale scores."""
        path = self.infer_task.get_path() if hasattr(self.infer_task, "get_path") else None
        return int(os.stat(path).st_mtime) if path and os.path.exists(path) else 0

    def score_image(self, image_uri: str, device: str) -> float:
        """Run the inference task on one study and return its score."""
        captured: dict[str, torch.Tensor] = {}
        out_key = getattr(self.infer_task, "output_label_key", "pred")

        def capture(data: dict[str, Any]) -> dict[str, Any]:
            pred = data[out_key]
            captured["pred"] = pred if isinstance(pred, torch.Tensor) else torch.as_tensor(pred)
            return data

        request = {"image": image_uri, "device": device, "skip_writer": True, "logging": "error"}
        self.infer_task(request, callbacks={CallBackTypes.INFERER: capture})
        if "pred" not in captured:
            raise RuntimeError(f"inference on {image_uri} produced no '{out_key}' output to score")
        pred = captured["pred"].detach().float().cpu()
        if pred.ndim < 2:
            raise ValueError(f"inference output for {image_uri} has shape {tuple(pred.shape)}; expected (C, *spatial)")
        score = mean_voxel_entropy(
            pred[None], activation=self.activation, normalize=self.normalize, top_fraction=self.top_fraction
        )[0]
        return float(score)

    def score_images(self, image_ids: Sequence[str], datastore: Datastore, device: str) -> dict[str, float]:
        """Score the given studies, save the scores in the datastore, and return them."""
        model_ts = self.model_ts()
        scores: dict[str, float] = {}
        for image_id in image_ids:
            start = time.time()
            score = self.score_image(datastore.get_image_uri(image_id), device)
            datastore.update_image_info(image_id, {self.key: score, self.key_ts: model_ts})
            scores[image_id] = score
            logger.info(f"DyCON entropy:: {image_id} => {score:.5f} ({time.time() - start:.2f} s)")
        return scores

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        start = time.time()
        device = name_to_device(request.get("device"))
        force = as_bool(request.get("force", False), "force")
        max_samples = int(request.get("max_samples", self.max_samples) or 0)
        model_ts = self.model_ts()

        unlabeled = sorted(datastore.get_unlabeled_images())
        todo = [i for i in unlabeled if force or datastore.get_image_info(i).get(self.key_ts) != model_ts]
        todo = todo[:max_samples] if max_samples > 0 else todo
        self.score_images(todo, datastore, device)

        scores = {}
        for image_id in unlabeled:
            value = datastore.get_image_info(image_id).get(self.key)
            if _finite(value):
                scores[image_id] = float(value)
        summary = {
            "total": len(unlabeled),
            "skipped": len(unlabeled) - len(todo),
            "executed": len(todo),
            "latency": round(time.time() - start, 3),
            "key": self.key,
            "ranking": [{"id": i, "score": s} for i, s in rank_by_entropy(scores)],
        }
        logger.info(f"DyCON entropy:: total {summary['total']}, scored {summary['executed']}")
        return summary


ScoringProvider = Union[DyCONEntropyScoring, Callable[[], Union[DyCONEntropyScoring, None]], None]


class MostUncertainStrategy(Strategy):
    """Active-learning strategy: the unlabeled study with the highest DyCON entropy score goes next.

    Scores are read from the datastore (written by :class:`DyCONEntropyScoring`). Studies without a score are
    scored on the spot when a scoring method is given (``scoring``), otherwise they wait until one has run; when no
    unlabeled study has a score at all, the first one by id is returned.

    With ``reserve_seconds > 0``, a study handed out by this strategy less than that many seconds ago is skipped
    (so that two annotators working at once do not get the same study), unless every candidate was.

    Args:
        key: datastore info key holding the score.
        scoring: the scoring method (or a zero-argument callable returning it) used for unscored studies.
        reserve_seconds: see above; 0 disables it.
    """

    def __init__(self, key: str = DEFAULT_KEY, scoring: ScoringProvider = None, reserve_seconds: int = 0) -> None:
        super().__init__("Most uncertain unlabeled study first (DyCON mean voxel entropy)")
        self.key = key
        self._scoring = scoring
        self.reserve_seconds = reserve_seconds

    def _scoring_method(self) -> DyCONEntropyScoring | None:
        s = self._scoring
        if s is None or isinstance(s, DyCONEntropyScoring):
            return s
        return s()

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "")
        infos = {i: datastore.get_image_info(i) for i in images}
        scores = {i: float(info[self.key]) for i, info in infos.items() if _finite(info.get(self.key))}

        missing = sorted(i for i in images if i not in scores)
        scoring = self._scoring_method()
        if missing and scoring is not None:
            logger.info(f"{strategy}: scoring {len(missing)} unscored studies first")
            scores.update(scoring.score_images(missing, datastore, name_to_device(request.get("device"))))

        exclude = set()
        if self.reserve_seconds > 0:
            now = time.time()
            for i, info in infos.items():
                ts = info.get("strategy", {}).get(strategy, {}).get("ts", 0)
                if now - ts < self.reserve_seconds:
                    exclude.add(i)
        choice = most_uncertain(scores, images, exclude) or most_uncertain(scores, images)
        if choice is None:
            choice = sorted(images)[0]
            logger.warning(f"{strategy}: no unlabeled study has a '{self.key}' score yet; returning {choice}")
            return {"id": choice}
        logger.info(f"{strategy}: selected {choice} ({self.key} = {scores[choice]:.5f})")
        return {"id": choice, self.key: scores[choice]}


class DyCONBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` for a DyCON bundle: unlabeled datastore studies in, served weights out.

    - **Unlabeled stream.** Stock MONAI Label hands a bundle only the labeled studies (``train#dataset#data``).
      DyCON learns from unlabeled scans too: this task also sets the bundle's unlabeled stream (``unlabeled_key``,
      by default ``train#unlabeled_dataset#data``) to ``[{"image": path}, ...]`` for every study of the datastore
      without a final label. With none (request ``"dycon_unlabeled": false``, or no unlabeled study left) the stream
      is the labeled images without their labels. The bundle itself never reads a ``dataset_dir`` here.
    - **Workflow.** The run goes through :class:`dycon_monai.bundle.DyconWorkflow` (``workflow_name``, in process
      for one GPU, ``--workflow_name`` on the ``torchrun`` command for several): override check, run folder, run
      record and log, as on the command line.
    - **Published weights.** When the bundle's train config has the key ``publish_key`` (default
      ``publish_model_to_bundle``), it is set to true, so that the run ends by copying its best weights to
      ``<bundle>/models/model.pt``: the file MONAI Label serves, and reloads when it changes. A command-line run of
      the bundle keeps its default (false) and leaves the bundle's ``models/`` alone.

    Everything else is the stock task.

    Request keys (besides the stock ones): ``dycon_unlabeled`` (default ``unlabeled_default``) and
    ``max_unlabeled`` (use at most this many unlabeled studies, by id order; 0 = all).

    Args:
        path: bundle folder.
        conf: app config.
        unlabeled_key: config id of the bundle's unlabeled data list.
        publish_key: config id of the bundle's switch that publishes the trained weights to ``models/``.
        unlabeled_default: default of the request's ``dycon_unlabeled``.
        kwargs: passed to ``BundleTrainTask``.
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        unlabeled_key: str = UNLABELED_KEY,
        publish_key: str = PUBLISH_KEY,
        unlabeled_default: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, conf, **kwargs)
        self.unlabeled_key = unlabeled_key
        self.publish_key = publish_key
        self.unlabeled_default = unlabeled_default
        self._pending_unlabeled: list[dict[str, str]] | None = None

    def _has_key(self, key: str) -> bool:
        if not self.is_valid():
            return False
        try:
            return self.bundle_config.get(key) is not None
        except (KeyError, ValueError, TypeError):
            return False

    def has_unlabeled_stream(self) -> bool:
        """Whether the bundle's train config has ``unlabeled_key`` (i.e. it is a semi-supervised DyCON bundle)."""
        return self._has_key(self.unlabeled_key)

    def publishes_model(self) -> bool:
        """Whether the bundle's train config has the ``publish_key`` switch."""
        return self._has_key(self.publish_key)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> Any:
        self._pending_unlabeled = None
        if (
            as_bool(request.get("dycon_unlabeled", self.unlabeled_default), "dycon_unlabeled")
            and self.has_unlabeled_stream()
        ):
            ids = sorted(datastore.get_unlabeled_images())
            cap = int(request.get("max_unlabeled", 0) or 0)
            ids = ids[:cap] if cap > 0 else ids
            if ids:
                self._pending_unlabeled = [{"image": datastore.get_image_uri(i)} for i in ids]
                logger.info(f"DyCON train:: {len(ids)} unlabeled studies from the datastore -> {self.unlabeled_key}")
        try:
            return super().__call__(request, datastore)
        finally:
            self._pending_unlabeled = None

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if self.has_unlabeled_stream():
            if self._pending_unlabeled:
                overrides[self.unlabeled_key] = self._pending_unlabeled
            else:  # no unlabeled study: the labeled images without their labels
                labeled = overrides.get(self.const.key_train_dataset_data()) or []
                overrides[self.unlabeled_key] = [{"image": item["image"]} for item in labeled]
        if self.publishes_model():
            overrides[self.publish_key] = True
            logger.info(f"DyCON train:: the trained weights go to {self.bundle_path}/models/model.pt")
        return overrides

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        super().run_single_gpu(request, {**overrides, "workflow_name": WORKFLOW_NAME})

    def run_multi_gpu(self, request: dict[str, Any], cmd: list[str], env: dict[str, str]) -> None:
        super().run_multi_gpu(request, [*cmd, "--workflow_name", WORKFLOW_NAME], env)


def dycon_unlabeled_default(app: Any) -> bool:
    """The app config ``dycon_train_unlabeled`` (default true): feed unlabeled datastore studies to training."""
    return as_bool(_app_conf(app).get("dycon_train_unlabeled", "true"), "dycon_train_unlabeled")


def _app_conf(app: Any) -> dict[str, str]:
    return getattr(app, "conf", None) or {}


def _dycon_bundle(app: Any) -> tuple[str, str] | None:
    """(name, folder) of the bundle used for scoring: ``dycon_bundle_path``, ``dycon_scoring_model`` or the first."""
    conf = _app_conf(app)
    if conf.get("dycon_bundle_path"):
        path = conf["dycon_bundle_path"]
        return os.path.basename(os.path.normpath(path)), path
    models: dict[str, str] = getattr(app, "models", None) or {}
    if not models:
        logger.warning(f"DyCON active learning: the app has no bundle models; not adding '{DEFAULT_KEY}'")
        return None
    name = conf.get("dycon_scoring_model") or next(iter(models))
    if name not in models:
        raise ValueError(
            f"--conf dycon_scoring_model {name!r} is not one of the app's bundles {sorted(models)}; "
            "pass one of those names"
        )
    return name, models[name]


def dycon_scoring_method(app: Any) -> DyCONEntropyScoring | None:
    """The app's :class:`DyCONEntropyScoring` (built once, on the app's bundle), or None without a usable bundle."""
    if not hasattr(app, "_dycon_scoring_cache"):
        app._dycon_scoring_cache = None
        found = _dycon_bundle(app)
        if found is not None:
            from monailabel.tasks.infer.bundle import BundleInferTask

            name, path = found
            conf = _app_conf(app)
            task = BundleInferTask(path, conf, skip_writer=True)
            if not task.is_valid():
                logger.warning(f"DyCON active learning: bundle {path} has no usable inference config or weights")
                return None
            top = conf.get("dycon_top_fraction")
            app._dycon_scoring_cache = DyCONEntropyScoring(task, top_fraction=float(top) if top else None)
            logger.info(f"+++ Adding Scoring Method:: {DEFAULT_KEY} => {name}")
    return app._dycon_scoring_cache


def dycon_scoring_methods(app: Any) -> dict[str, ScoringMethod]:
    """``{"dycon_entropy": scoring}`` for ``init_scoring_methods`` (empty without a usable bundle)."""
    scoring = dycon_scoring_method(app)
    return {DEFAULT_KEY: scoring} if scoring is not None else {}


def dycon_strategies(app: Any) -> dict[str, Strategy]:
    """``{"dycon_entropy": MostUncertainStrategy}`` for ``init_strategies``; unscored studies are scored on demand."""
    reserve = int(_app_conf(app).get("dycon_reserve_seconds", "0") or 0)
    return {
        DEFAULT_KEY: MostUncertainStrategy(
            key=DEFAULT_KEY, scoring=lambda: dycon_scoring_method(app), reserve_seconds=reserve
        )
    }


def dycon_trainers(app: Any, trainers: dict[str, TrainTask]) -> dict[str, TrainTask]:
    """Replace the stock ``BundleTrainTask`` of each DyCON bundle by :class:`DyCONBundleTrainTask`.

    A DyCON bundle is one whose train config has the unlabeled stream (``train#unlabeled_dataset#data``) or the
    ``publish_model_to_bundle`` switch. With the app config ``--conf dycon_train_unlabeled false`` the trainer feeds
    no unlabeled datastore studies unless a request says ``"dycon_unlabeled": true``; it still publishes the
    trained weights.
    """
    conf = _app_conf(app)
    unlabeled = dycon_unlabeled_default(app)
    out = dict(trainers)
    for name, task in trainers.items():
        if type(task) is BundleTrainTask and task.is_valid():
            replacement = DyCONBundleTrainTask(task.bundle_path, conf, unlabeled_default=unlabeled)
            if replacement.has_unlabeled_stream() or replacement.publishes_model():
                out[name] = replacement
                feeds = f"unlabeled datastore studies feed {UNLABELED_KEY}" if unlabeled else "no unlabeled studies"
                logger.info(f"+++ Trainer {name}: DyCON train task ({feeds})")
    return out


def with_dycon_active_learning(cls: type) -> type:
    """Class decorator: extend an existing MONAI Label app class with the DyCON scoring method and strategy.

    The class keeps its name and bases (MONAI Label finds the app as the class in ``main.py`` that lists
    ``MONAILabelApp`` among its direct bases), and its own ``init_scoring_methods`` / ``init_strategies`` still run;
    their results are extended with ``dycon_entropy``, and the stock trainer of a DyCON bundle is replaced by
    :class:`DyCONBundleTrainTask` (unlabeled datastore studies feed the unlabeled stream; the trained weights are
    published to the bundle's ``models/model.pt``). In the
    ``monaibundle`` sample app::

        from dycon_monai.monailabel import with_dycon_active_learning

        @with_dycon_active_learning
        class MyApp(MONAILabelApp):
            ...

    App config keys (``--conf KEY VALUE``): ``dycon_scoring_model`` (bundle name; default the first of
    ``--conf models``), ``dycon_bundle_path`` (a bundle folder instead), ``dycon_top_fraction`` (average only
    the most uncertain voxels), ``dycon_reserve_seconds`` (skip a study handed out that recently),
    ``dycon_train_unlabeled`` (``false``: feed no unlabeled studies unless a request asks for them).
    """
    own_scoring = cls.init_scoring_methods
    own_strategies = cls.init_strategies
    own_trainers = cls.init_trainers

    def init_trainers(self: Any) -> dict[str, TrainTask]:
        return dycon_trainers(self, dict(own_trainers(self) or {}))

    def init_scoring_methods(self: Any) -> dict[str, ScoringMethod]:
        methods = dict(own_scoring(self) or {})
        methods.update(dycon_scoring_methods(self))
        logger.info(f"Active Learning Scoring Methods:: {list(methods)}")
        return methods

    def init_strategies(self: Any) -> dict[str, Strategy]:
        strategies = dict(own_strategies(self) or {})
        strategies.update(dycon_strategies(self))
        logger.info(f"Active Learning Strategies:: {list(strategies)}")
        return strategies

    cls.init_trainers = init_trainers
    cls.init_scoring_methods = init_scoring_methods
    cls.init_strategies = init_strategies
    return cls


class DyCONActiveLearningMixin:
    """Mixin form of :func:`with_dycon_active_learning` for app classes written from scratch.

    Put it before ``MONAILabelApp`` among the bases, and let the app class call ``super()`` if it defines
    ``init_scoring_methods`` / ``init_strategies`` itself (methods defined on the app class take precedence over
    the mixin's). To extend an existing app class such as the sample app's ``MyApp``, use the decorator instead.
    """

    def init_trainers(self) -> dict[str, TrainTask]:
        return dycon_trainers(self, dict(super().init_trainers() or {}))  # type: ignore[misc]

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        methods = dict(super().init_scoring_methods() or {})  # type: ignore[misc]
        methods.update(dycon_scoring_methods(self))
        return methods

    def init_strategies(self) -> dict[str, Strategy]:
        strategies = dict(super().init_strategies() or {})  # type: ignore[misc]
        strategies.update(dycon_strategies(self))
        return strategies


def _finite(value: Any) -> bool:
    """True for a finite int/float (a stored score), False for None, NaN, strings."""
    return isinstance(value, (int, float)) and math.isfinite(float(value))
