"""Override keys must name something the bundle defines.

``monai.bundle`` adds an unknown ``--key value`` to the config silently, so ``--max_iteration 10`` would train for
the default number of iterations. :class:`~dycon_monai.bundle.DyconWorkflow` checks every override key with
:func:`check_override_keys` against the config files it was given, before anything is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["TRACKING_KEYS", "check_override_keys"]

# keys that `tracking="mlflow"` adds to the config (monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS)
TRACKING_KEYS = frozenset(
    {
        "tracking_uri",
        "experiment_name",
        "run_name",
        "save_execute_config",
        "is_not_rank0",
        "trainer",
        "validator",
        "evaluator",
        "handlers_id",
        "configs",
    }
)


def check_override_keys(
    config: Mapping[str, Any],
    keys: Iterable[str],
    config_files: Sequence[str] = (),
    allowed: Iterable[str] = (),
) -> list[str]:
    """Stop when an override key is not defined by ``config``.

    A key is accepted when it is an id of ``config`` (nested ids use ``#``, as in ``train#trainer#amp``; MONAI's
    ``::`` works too), a new argument of an existing component (its parent id is a dict), a ``_meta_`` key, or one
    of ``allowed``.

    Args:
        config: the raw config, every config file merged, no override applied yet.
        keys: the override keys.
        config_files: the config files, named in the error message.
        allowed: more keys to accept (e.g. :data:`TRACKING_KEYS` when tracking is on).

    Returns:
        The keys that were checked.

    Raises:
        ValueError: naming each unknown key, the closest defined keys and the defined top-level keys.
    """
    parser = ConfigParser(dict(config))
    allowed = frozenset(allowed)
    keys = [str(k) for k in keys]
    top_level = sorted(k for k in config if not str(k).startswith("_"))
    unknown = []
    for raw_key in keys:
        key = raw_key.lstrip("+").replace("::", "#")
        if key in allowed or key.startswith("_meta_") or key in parser:
            continue
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is not None and parent in parser and isinstance(parser[parent], dict):
            continue
        unknown.append(raw_key)
    if unknown:
        where = ", ".join(str(f) for f in config_files) or "the config"
        lines = []
        for key in unknown:
            near = difflib.get_close_matches(key.split("#")[0], top_level, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join('--' + n for n in near)}?" if near else ""
            lines.append(f"  --{key}: not defined in {where}.{hint}")
        raise ValueError(
            "Unknown config key(s) in the overrides; monai.bundle would add them as new, unused keys:\n"
            + "\n".join(lines)
            + f"\nKeys this bundle defines: {', '.join(top_level)}.\n"
            "Nested ids use '#', e.g. --train#trainer#amp true."
        )
    return keys
