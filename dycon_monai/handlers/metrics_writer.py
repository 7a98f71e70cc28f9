"""Ignite handler that writes per-case metrics, a run summary, overlays and entropy maps for an evaluator."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing

from dycon_monai.evaluation.metrics import as_binary_mask, case_metrics
from dycon_monai.evaluation.pictures import save_overlay
from dycon_monai.evaluation.strata import (
    SIZE_THRESHOLDS_ML,
    case_metric_keys,
    check_metric_policy,
    distribution_stratum,
    size_stratum,
    summarize_cases,
)
from dycon_monai.evaluation.transforms import prediction_entropy
from dycon_monai.utils.io import atomic_save_nifti, atomic_write_csv, atomic_write_json

__all__ = ["CaseMetricsWriter", "METRICS_CSV_COLUMNS", "metrics_csv_columns"]


def metrics_csv_columns(metric_policy: str = "both") -> tuple[str, ...]:
    """Column order of ``metrics.csv`` for a ``metric_policy`` (``"monai"``, ``"paper"`` or ``"both"``)."""
    return (
        ("case_id",)
        + case_metric_keys(metric_policy)
        + ("size_stratum", "distribution_stratum", "spacing_mm", "spacing_source")
    )


#: Column order of ``metrics.csv`` under the default policy ``"both"`` (MONAI keys, then the ``paper_`` keys).
METRICS_CSV_COLUMNS: tuple[str, ...] = metrics_csv_columns("both")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


class CaseMetricsWriter:
    """Collect :func:`~dycon_monai.evaluation.case_metrics` per case during an evaluation; write the run's files.

    What it expects from the evaluator (``engine.state.output`` and ``engine.state.batch`` after each iteration,
    either decollated lists of dicts, as MONAI evaluators produce by default, or batch-first dicts):

    * ``label_key``: the ground truth, one channel ``(1, *spatial)`` with values {0, 1} (or class indices; non-zero
      is lesion), or one-hot ``(C, *spatial)``;
    * ``pred_key``: best after the post-transforms ``AsDiscreted(argmax=True)`` (one channel) or
      ``AsDiscreted(argmax=True, to_onehot=C)``. Not yet discrete predictions are accepted too: ``(C >= 2, ...)``
      probabilities (channels sum to 1) or logits are soft-maxed and arg-maxed; a one-channel map in [0, 1] is
      thresholded at 0.5, other one-channel values are read as logits and thresholded at 0. Their normalised
      entropy is then used when ``entropy_key`` is absent;
    * ``image_key`` (optional): drawn under the overlays;
    * ``entropy_key`` (optional): ``(1, *spatial)`` entropy map, for example from
      :class:`~dycon_monai.evaluation.transforms.PredictionEntropyd`;
    * spacing in mm: from the affine of the prediction, label or image ``MetaTensor`` (``pixdim``), else from
      ``<key>_meta_dict["pixdim"]``, else 1 mm with a warning (``spacing_source`` column says which);
    * case id: ``case_id_key`` of the batch item (the datalists carry ``"case_id"``), else the image file name from
      the meta data (``filename_or_obj``), else ``case_<index>``.

    Files (see ``docs/evaluation.md``), all written atomically: ``metrics.csv`` and ``summary.json`` at
    ``COMPLETED``; ``overlays/<case>.png`` for the first ``num_overlays`` cases and ``entropy/<case>_entropy.nii.gz``
    (when an entropy map is available) as the cases arrive, so that no volume is kept in memory.

    Args:
        output_dir: run folder to write into (created if needed).
        image_key: image key in the output / batch.
        label_key: ground-truth key.
        pred_key: prediction key.
        entropy_key: entropy-map key.
        num_overlays: how many cases get an overlay PNG (``None``: all, 0: none).
        run_info: run metadata stored as ``summary.json["run"]`` (``method``, ``labeled_fraction``, ``dataset``,
            ``fold`` ... as read by ``python -m dycon_monai.evaluation.compare``).
        case_id_key: case id key in the batch items.
        save_entropy_maps: write entropy maps as NIfTI.
        n_slices: slices per overlay.
        size_thresholds_ml: lesion-size strata boundaries in ml.
        metric_policy: which overlap and surface metrics are computed and written: ``"monai"`` (MONAI's Dice, IoU,
            symmetric HD95 / ASD with our empty policy), ``"paper"`` (the DyCON authors' medpy convention, columns
            ``paper_dice``, ``paper_jaccard``, ``paper_hd95_mm``, ``paper_asd_mm``, ``paper_hd95_vox``,
            ``paper_asd_vox``) or ``"both"`` (default). The paper set is summarised in
            ``summary.json["paper_metrics"]``; see :func:`~dycon_monai.evaluation.metrics.case_metrics`.

    Example::

        evaluator = SupervisedEvaluator(..., postprocessing=Compose([Activationsd("pred", softmax=True),
            PredictionEntropyd("pred"), AsDiscreted("pred", argmax=True)]))
        CaseMetricsWriter("runs/dycon_10pct/eval", run_info={"method": "dycon", "labeled_fraction": 0.1}).attach(
            evaluator)
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
        entropy_key: str = "entropy",
        num_overlays: int | None = 8,
        run_info: Mapping[str, Any] | None = None,
        case_id_key: str = "case_id",
        save_entropy_maps: bool = True,
        n_slices: int = 3,
        size_thresholds_ml: Sequence[float] = SIZE_THRESHOLDS_ML,
        metric_policy: str = "both",
    ) -> None:
        self.metric_policy = check_metric_policy(metric_policy)
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.entropy_key = entropy_key
        self.num_overlays = num_overlays
        self.run_info = dict(run_info or {})
        self.case_id_key = case_id_key
        self.save_entropy_maps = save_entropy_maps
        self.n_slices = n_slices
        self.size_thresholds_ml = tuple(size_thresholds_ml)
        self.rows: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._n_overlays = 0
        self._warned_spacing = False

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED`` (reset), ``ITERATION_COMPLETED`` (collect) and ``COMPLETED`` (write)."""
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the collected cases (each evaluator run starts afresh)."""
        self.rows = []
        self.summary = None
        self._n_overlays = 0

    # -- per iteration -------------------------------------------------------------------------------------------
    def _items(self, engine: Engine) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        out, batch = engine.state.output, engine.state.batch
        if isinstance(out, Mapping):
            out = decollate_batch(dict(out), detach=True)
        if not isinstance(out, list):
            raise TypeError(
                f"CaseMetricsWriter: engine.state.output must be a dict or a list of dicts, got {type(out).__name__}."
            )
        if isinstance(batch, Mapping):
            batch = decollate_batch(dict(batch), detach=True)
        if not isinstance(batch, list) or len(batch) != len(out):
            batch = [{}] * len(out)
        return [(o, b if isinstance(b, Mapping) else {}) for o, b in zip(out, batch)]

    def _get(self, item: Mapping[str, Any], key: str, case: str, required: bool = True) -> Any:
        if key in item:
            return item[key]
        if required:
            raise KeyError(
                f"CaseMetricsWriter: case {case!r} has no {key!r} in the evaluator output; keys: {sorted(map(str, item))}."
            )
        return None

    def _spacing(self, out: Mapping[str, Any], batch: Mapping[str, Any], ndim: int) -> tuple[tuple[float, ...], str]:
        for key in (self.pred_key, self.label_key, self.image_key):
            for src in (out, batch):
                x = src.get(key)
                if isinstance(x, MetaTensor) and x.affine is not None and x.affine.ndim == 2:
                    sp = affine_to_spacing(x.affine, r=ndim)
                    return tuple(float(s) for s in np.asarray(sp)), f"{key}.affine"
                meta = src.get(f"{key}_meta_dict")
                if isinstance(meta, Mapping) and meta.get("pixdim") is not None:
                    pix = np.asarray(meta["pixdim"], dtype=np.float64).ravel()
                    return tuple(float(s) for s in pix[1 : ndim + 1]), f"{key}_meta_dict.pixdim"
        if not self._warned_spacing:
            warnings.warn(
                "CaseMetricsWriter: no spacing found (no MetaTensor affine or meta-dict pixdim on pred/label/image); "
                "using 1 mm, so mm values equal voxel values.",
                stacklevel=2,
            )
            self._warned_spacing = True
        return (1.0,) * ndim, "default"

    def _case_id(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> str:
        for src in (batch, out):
            cid = src.get(self.case_id_key)
            if cid is not None and not isinstance(cid, torch.Tensor):
                cid = cid[0] if isinstance(cid, (list, tuple)) and len(cid) == 1 else cid
                return str(cid)
        for key in (self.image_key, self.label_key, self.pred_key):
            for src in (out, batch):
                x = src.get(key)
                meta = x.meta if isinstance(x, MetaTensor) else src.get(f"{key}_meta_dict")
                name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
                if isinstance(name, (list, tuple)):
                    name = name[0] if name else None
                if name:
                    return _strip_ext(os.path.basename(str(name)))
        return f"case_{len(self.rows):04d}"

    @staticmethod
    def _prediction_mask(pred: torch.Tensor, case: str) -> tuple[np.ndarray, torch.Tensor | None]:
        """Binary mask from a prediction, plus its entropy when the prediction was soft."""
        p = torch.as_tensor(pred).detach().float().cpu()
        if p.ndim != 4:
            raise ValueError(f"CaseMetricsWriter: case {case!r}: pred must be (C, H, W, D), got {tuple(p.shape)}.")
        discrete = bool(torch.all(p == torch.round(p)) and torch.all(p >= 0))
        if discrete:
            return as_binary_mask(p, "pred", 3), None
        if p.shape[0] >= 2:
            sums = p.sum(0)
            probs = p if bool(torch.all(p >= 0) and torch.allclose(sums, torch.ones_like(sums), atol=1e-3)) else None
            probs = probs if probs is not None else torch.softmax(p, dim=0)
            return (torch.argmax(probs, dim=0) != 0).numpy(), prediction_entropy(probs)
        prob = p if bool(torch.all((p >= 0) & (p <= 1))) else torch.sigmoid(p)
        return (prob[0] >= 0.5).numpy(), prediction_entropy(prob)

    def collect(self, engine: Engine) -> None:
        """Compute the metrics of every case of the current iteration and write its overlay / entropy map."""
        for out, batch in self._items(engine):
            case = self._case_id(out, batch)
            label = self._get(out, self.label_key, case, required=False)
            label = label if label is not None else self._get(batch, self.label_key, case)
            pred = self._get(out, self.pred_key, case)
            pred_mask, soft_entropy = self._prediction_mask(pred, case)
            label_mask = as_binary_mask(torch.as_tensor(label).detach().cpu(), "label", 3)
            if label_mask.shape != pred_mask.shape:
                raise ValueError(
                    f"CaseMetricsWriter: case {case!r}: label spatial shape {label_mask.shape} differs from pred "
                    f"{pred_mask.shape}; invert the resampling of one of them or evaluate both in the same space."
                )
            spacing, source = self._spacing(out, batch, pred_mask.ndim)
            row: dict[str, Any] = {
                "case_id": case,
                **case_metrics(pred_mask, label_mask, spacing, metric_policy=self.metric_policy),
            }
            row["size_stratum"] = size_stratum(volume_ml=row["label_volume_ml"], thresholds_ml=self.size_thresholds_ml)
            row["distribution_stratum"] = distribution_stratum(row["label_lesions"])
            row["spacing_mm"] = "x".join(f"{s:g}" for s in spacing)
            row["spacing_source"] = source
            self.rows.append(row)

            entropy = out.get(self.entropy_key)
            entropy = soft_entropy if entropy is None else entropy
            safe = _SAFE_NAME.sub("_", case) or f"case_{len(self.rows):04d}"
            if entropy is not None and self.save_entropy_maps:
                ent = torch.as_tensor(entropy).detach().float().cpu()
                affine = pred.affine if isinstance(pred, MetaTensor) else getattr(entropy, "affine", None)
                atomic_save_nifti(
                    self.output_dir / "entropy" / f"{safe}_entropy.nii.gz",
                    ent.numpy()[0] if ent.ndim == 4 else ent.numpy(),
                    None if affine is None else np.asarray(torch.as_tensor(affine).cpu()),
                )
            image = out.get(self.image_key, batch.get(self.image_key))
            if image is not None and (self.num_overlays is None or self._n_overlays < self.num_overlays):
                dice = row["dice"] if "dice" in row else row["paper_dice"]
                save_overlay(
                    image,
                    label_mask,
                    pred_mask,
                    self.output_dir / "overlays" / f"{safe}.png",
                    entropy=entropy,
                    n_slices=self.n_slices,
                    spacing=spacing,
                    title=f"{case}  Dice {dice:.3f}  lesions {row['label_lesions']} true / {row['pred_lesions']} pred",
                )
                self._n_overlays += 1

    # -- at the end ------------------------------------------------------------------------------------------------
    def _gathered_rows(self) -> list[dict[str, Any]] | None:
        if idist.get_world_size() <= 1:
            return self.rows
        texts = idist.all_gather(json.dumps(self.rows, default=str))
        if idist.get_rank() != 0:
            return None
        return [r for t in texts for r in json.loads(t)]

    def write(self, engine: Engine | None = None) -> dict[str, Any] | None:
        """Write ``metrics.csv`` and ``summary.json``; returns the summary (``None`` on non-zero ranks)."""
        rows = self._gathered_rows()
        if rows is None:
            return None
        summary = summarize_cases(
            rows, thresholds_ml=self.size_thresholds_ml, run_info=self.run_info, metric_policy=self.metric_policy
        )
        summary["files"] = {
            "metrics_csv": "metrics.csv",
            "overlays": "overlays/" if any((self.output_dir / "overlays").glob("*.png")) else None,
            "entropy_maps": "entropy/" if any((self.output_dir / "entropy").glob("*.nii.gz")) else None,
        }
        if engine is not None and getattr(engine.state, "epoch", None) is not None:
            summary["evaluator_epoch"] = int(engine.state.epoch)
        atomic_write_csv(self.output_dir / "metrics.csv", rows, metrics_csv_columns(self.metric_policy))
        atomic_write_json(self.output_dir / "summary.json", summary)
        self.summary = summary
        return summary
