#!/usr/bin/env bash
# Create (once) and cache a separate virtual environment for MONAI Label 0.8.5 with dycon_monai installed in it.
#
# MONAI Label needs torchvision, which drags in a CUDA build of torch (several GB), so it never goes into the main
# development environment. This script builds its own venv and is idempotent: when the completion marker matches
# the requested versions and `import monailabel, dycon_monai` works, it only makes sure that dycon_monai points at
# this checkout and exits.
#
# Environment variables:
#   MONAILABEL_VENV            where the venv lives (default: <repo>/.venv-monailabel, gitignored by `.venv*/`)
#   MONAILABEL_PYTHON          interpreter used to create it (default: python3; must be CPython 3.9-3.12)
#   MONAILABEL_TORCH           torch version (default: 2.14.1)
#   MONAILABEL_TORCHVISION     torchvision version (default: 0.29.1, the release built against torch 2.14.1)
#   MONAILABEL_MONAI           MONAI version in this venv (default: 1.5.2; see below why not 1.6)
#   MONAILABEL_FORCE=1         rebuild from scratch even if the marker says the venv is complete
#
# Usage: bash scripts/monailabel_env.sh   (or: make monailabel-env)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MONAILABEL_VENV:-$REPO_ROOT/.venv-monailabel}"
PY="${MONAILABEL_PYTHON:-python3}"
TORCH_VERSION="${MONAILABEL_TORCH:-2.14.1}"
TORCHVISION_VERSION="${MONAILABEL_TORCHVISION:-0.29.1}"
# MONAI >= 1.6.0 breaks MONAI Label 0.8.5 inference on NIfTI studies: its Spacingd updates every "image_*" entry of
# the data dict as a metadata dict, and MONAI Label puts the string "image_path" there
# (AttributeError: 'str' object has no attribute 'update'). 1.5.2 is the newest release without that.
MONAI_VERSION="${MONAILABEL_MONAI:-1.5.2}"
MONAILABEL_VERSION="0.8.5"
# MONAI Label leaves its DICOM dependencies unpinned and they resolve to a set that does not import:
# pydicom-seg needs pydicom < 3 while the newest dicomweb-client needs pydicom >= 3.
DICOM_PINS=("pydicom<3" "dicomweb-client[gcp]==0.59.1" "pynetdicom<3")
SPEC="monailabel==$MONAILABEL_VERSION monai==$MONAI_VERSION torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION ${DICOM_PINS[*]}"
MARKER="$VENV/.dycon-monailabel-complete"
VPY="$VENV/bin/python"

log() { printf '[monailabel-env %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# (Re)install dycon_monai when the venv's copy is not this checkout (an editable install made from another clone)
# or when the package's dependency files changed since it was installed.
package_hash() { cat "$REPO_ROOT/setup.cfg" "$REPO_ROOT/pyproject.toml" 2>/dev/null | sha256sum | cut -d' ' -f1; }
ensure_dycon() {
    local where
    # run from / so that a dycon_monai folder in the current directory does not answer for the installed one
    where="$(cd / && "$VPY" -c 'import os, dycon_monai; print(os.path.dirname(os.path.dirname(os.path.abspath(dycon_monai.__file__))))' 2>/dev/null || true)"
    if [[ "$where" != "$REPO_ROOT" || "$(cat "$VENV/.dycon-package-hash" 2>/dev/null)" != "$(package_hash)" ]]; then
        log "installing dycon_monai from $REPO_ROOT (was: ${where:-not installed})"
        "$VPY" -m pip install -q -c "$VENV/dycon-constraints.txt" -e "$REPO_ROOT" \
            2> >(grep -v --line-buffered "is ignored: it is neither a file nor a directory" >&2)
        package_hash >"$VENV/.dycon-package-hash"
    fi
}

if [[ "${MONAILABEL_FORCE:-0}" != "1" && -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC" ]] \
    && (cd / && "$VPY" -c "import monailabel, torchvision") >/dev/null 2>&1; then
    ensure_dycon
    (cd / && "$VPY" -c "import monailabel, dycon_monai") >/dev/null
    log "already complete: $VENV ($SPEC)"
    exit 0
fi

START=$(date +%s)
if [[ -e "$VENV" ]]; then
    log "removing incomplete or outdated environment $VENV"
    rm -rf "$VENV"
fi
log "creating $VENV with $("$PY" --version 2>&1)"
"$PY" -m venv "$VENV"

# Every later pip call keeps torch/torchvision, MONAI and the DICOM set exactly where we put them, so no package can
# re-resolve torch to a newer (CUDA, multi-GB) release.
printf '%s\n' "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "monai==$MONAI_VERSION" "${DICOM_PINS[@]}" \
    | sed 's/\[gcp\]//' >"$VENV/dycon-constraints.txt"
PIP=("$VPY" -m pip install -q -c "$VENV/dycon-constraints.txt")
# pip warns once per package about index locations that do not exist on this machine; keep the log readable
pip_install() { "${PIP[@]}" "$@" 2> >(grep -v --line-buffered "is ignored: it is neither a file nor a directory" >&2); }

log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" wheel "setuptools>=61"

# sam2 (a MONAI Label dependency on Python >= 3.10) ships only as a source archive whose build requires torch:
# build it against the torch just installed instead of downloading another torch into an isolated build env, and
# skip its optional CUDA extension (we run with `--conf sam2 false`).
if "$VPY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    log "installing sam2 (no CUDA extension)"
    SAM2_BUILD_CUDA=0 pip_install --no-build-isolation sam2
fi

log "installing monailabel==$MONAILABEL_VERSION, monai==$MONAI_VERSION and the DICOM pins"
pip_install "monailabel==$MONAILABEL_VERSION" "${DICOM_PINS[@]}"

log "installing dycon_monai (editable) from $REPO_ROOT"
pip_install -e "$REPO_ROOT"
package_hash >"$VENV/.dycon-package-hash"

log "checking imports"
cd /  # import the installed dycon_monai, not a folder in the current directory
"$VPY" - <<'EOF'
import monai
import monailabel
import pydicom
import pydicom_seg  # noqa: F401  (fails when pydicom >= 3 slipped in)
import dicomweb_client  # noqa: F401
import torch
import torchvision

import dycon_monai
from monailabel.interfaces.tasks.scoring import ScoringMethod  # noqa: F401
from monailabel.interfaces.tasks.strategy import Strategy  # noqa: F401

print(
    f"torch {torch.__version__}, torchvision {torchvision.__version__}, monai {monai.__version__}, "
    f"monailabel {monailabel.__version__}, pydicom {pydicom.__version__}, dycon_monai {dycon_monai.__version__}"
)
EOF
test -x "$VENV/bin/monailabel" || { echo "monailabel launcher missing in $VENV/bin" >&2; exit 1; }

printf '%s' "$SPEC" >"$MARKER"
END=$(date +%s)
log "complete in $((END - START)) s, $(du -sh "$VENV" | cut -f1) on disk: $VENV"
log "use it with: PATH=\"$VENV/bin:\$PATH\" monailabel start_server ..."
