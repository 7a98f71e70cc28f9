"""Co-training method presets: which loss terms each named dual-network method switches on, and the ablation keys.

A co-training method is a choice of weights for :class:`~dycon_monai.engines.CoTrainingTrainer`, as a Mean-Teacher
method is for :class:`~dycon_monai.engines.MeanTeacherTrainer` (:mod:`dycon_monai.engines.methods`).
"""

from __future__ import annotations

import math
from typing import Any

from dycon_monai.utils.flags import as_bool

__all__ = [
    "CO_LOSS_TERMS",
    "CO_METHODS",
    "CO_OUTPUT_SCALARS",
    "DUAL_CCE_SWITCHES",
    "co_training_weights",
]

#: every loss term the co-training trainer puts on ``engine.state.output`` (``"loss"`` is the weighted total)
CO_LOSS_TERMS = (
    "loss",
    "loss_sup",
    "loss_cr",
    "loss_cps",
    "loss_efs",
    "loss_une",
    "loss_pgl",
    "loss_uncl",
    "loss_fecl",
)
#: all scalar entries of its ``engine.state.output``
CO_OUTPUT_SCALARS = (*CO_LOSS_TERMS, "cps_weight", "pgl_weight", "beta", "grad_norm")

#: the weight each term has in seed 003's full method (Eq. 1-3: every unlabeled term 1, ``alpha = 0.5`` for CR, the
#: contrastive term scaled by its time-dependent ``lambda_c``)
_DUAL_CCE = {"cps_weight": 1.0, "efs_weight": 1.0, "une_weight": 1.0, "pgl_weight": 1.0, "cr_weight": 0.5}
_OFF = {k: 0.0 for k in ("cps_weight", "efs_weight", "une_weight", "pgl_weight", "cr_weight")}

#: method presets (weights before ``eta`` and the ablation switches)
CO_METHODS: dict[str, dict[str, float]] = {
    # cross pseudo supervision: each network's hard pseudo-label supervises the other (ramped weight)
    "cps": {**_OFF, "cps_weight": 1.0, "uncl_weight": 0.0, "fecl_weight": 0.0},
    # CPS + UnCL between the two networks (dual entropy) + FeCL with the other network's pseudo-labels
    "cps_dycon": {**_OFF, "cps_weight": 1.0, "uncl_weight": 1.0, "fecl_weight": 1.0},
    # seed 003 in full: CCE (CPS + EFS), uncertainty estimation, prototype-guided contrast, consistency regularisation
    "dual_cce": {**_DUAL_CCE, "uncl_weight": 0.0, "fecl_weight": 0.0},
}

#: seed 003's ablation switches (Table 4) and the weights each one sets; ``cce`` is ``cps`` and ``efs`` together
DUAL_CCE_SWITCHES: dict[str, tuple[str, ...]] = {
    "cps": ("cps_weight",),
    "efs": ("efs_weight",),
    "cce": ("cps_weight", "efs_weight"),
    "pgl": ("pgl_weight",),
    "ue": ("une_weight",),
    "cr": ("cr_weight",),
}


def co_training_weights(
    method: str, eta: float = 1.0, cps_rampup: float = 0.0, **switches: bool | None
) -> dict[str, Any]:
    """Keyword arguments of :class:`~dycon_monai.engines.CoTrainingTrainer` that select a method.

    ==============  ====  ====  ====  ====  =====  ====  ====
    method          cps   efs   une   pgl   cr     uncl  fecl
    ==============  ====  ====  ====  ====  =====  ====  ====
    ``cps``         1     0     0     0     0      0     0
    ``cps_dycon``   1     0     0     0     0      eta   eta
    ``dual_cce``    1     1     1     1     0.5    0     0
    ==============  ====  ====  ====  ====  =====  ====  ====

    ``cps`` and ``cps_dycon`` ramp the CPS weight up with a sigmoid over ``cps_rampup`` iterations (the DyCON
    paper's co-training framework, supplementary Sec. 3.3); ``dual_cce`` follows seed 003's Eq. 1, where the
    unlabeled terms carry no weight or ramp, so its ``cps_rampup`` is 0 whatever is passed.

    Args:
        method: one of :data:`CO_METHODS`.
        eta: weight of UnCL and FeCL in ``cps_dycon``.
        cps_rampup: sigmoid ramp-up length of the CPS weight, in iterations.
        switches: seed 003's ablation switches (:data:`DUAL_CCE_SWITCHES`: ``cps``, ``efs``, ``cce``, ``pgl``,
            ``ue``, ``cr``): ``False`` turns the term(s) off, ``True`` on with seed 003's weight, ``None`` keeps the
            preset (the command-line strings ``"true"`` / ``"false"`` / ``"null"`` mean the same). They apply to every method (e.g. ``cps`` with ``pgl=True``).

    Returns:
        ``{"cps_weight", "efs_weight", "une_weight", "pgl_weight", "cr_weight", "uncl_weight", "fecl_weight",
        "cps_rampup"}``.

    Raises:
        ValueError: an unknown method or switch, a switch that is not a boolean / ``None``, or a negative ``eta``.
    """
    if method not in CO_METHODS:
        raise ValueError(f"unknown co-training method {method!r}; expected one of {sorted(CO_METHODS)}.")
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}.")
    weights: dict[str, Any] = dict(CO_METHODS[method])
    for key in ("uncl_weight", "fecl_weight"):
        weights[key] *= float(eta)
    for name, on in switches.items():
        if name not in DUAL_CCE_SWITCHES:
            raise ValueError(f"unknown ablation switch {name!r}; expected one of {sorted(DUAL_CCE_SWITCHES)}.")
        if on is None or (isinstance(on, str) and on.strip().lower() in ("null", "none")):
            continue
        on = as_bool(on, f"ablation switch {name}")
        for key in DUAL_CCE_SWITCHES[name]:
            weights[key] = _DUAL_CCE[key] if on else 0.0
    weights["cps_rampup"] = 0.0 if method == "dual_cce" else float(cps_rampup)
    return weights
