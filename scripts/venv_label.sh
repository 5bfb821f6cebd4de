#!/usr/bin/env bash
# Create (or refresh) the MONAI Label environment in .venv-label, apart from the project's .venv.
# monailabel 0.8.5 pins pydicom<3, dicomweb-client<0.60 and pynetdicom<3, and through its numpy pin numpy<2 (so
# Python <= 3.12); its full dependency list also pulls torchvision, which has no CPU build here. So monailabel goes in
# with --no-deps and the runtime modules its server imports are listed explicitly below. The project is installed in
# the same environment (also --no-deps) with its own runtime dependencies except pydicom>=3: its code works on 2.4.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ULTRAMAE_LABEL_VENV:-$ROOT/.venv-label}"
PY="${PYTHON_LABEL:-$(command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)}"
STAMP="$VENV/.ultramae-label-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/venv_label.sh" | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  return 0 2>/dev/null || exit 0
fi

"$PY" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "MONAI Label 0.8.5 needs Python 3.10-3.12"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# Repeated in every install so that no later package lifts them.
PINS=("numpy>=1.26,<2" "pydicom>=2.4,<3" "setuptools<81")  # pydicom 2 needs pkg_resources

bash "$ROOT/scripts/install_torch.sh" "$VENV/bin/python"

# MONAI Label's server runtime (what `monailabel start_server` and a BasicInferTask/BasicTrainTask app import).
"${PIP[@]}" "${PINS[@]}" "dicomweb-client>=0.59,<0.60" "pynetdicom>=2,<3" \
  "monai>=1.6,<1.7" "pytorch-ignite>=0.5" nibabel "scikit-image" pynrrd \
  fastapi uvicorn python-multipart pydantic pydantic-settings python-dotenv requests requests-toolbelt httpx \
  schedule timeloop expiringdict expiring-dict cachetools watchdog filelock psutil passlib "python-jose[cryptography]" \
  bcrypt pyyaml girder-client einops tensorboard pyjwt google-auth pydicom-seg
"${PIP[@]}" --no-deps "monailabel==0.8.5"

# The project, with its runtime dependencies except pydicom>=3 (pydicom 2.4 is installed above).
"${PIP[@]}" "${PINS[@]}" itk scipy fire "pillow>=10" threadpoolctl tqdm "av>=12" "numba>=0.60" pylibjpeg pylibjpeg-libjpeg \
  pylibjpeg-openjpeg pylibjpeg-rle pytest ruff
"${PIP[@]}" --no-deps -e "$ROOT"
echo "$want" > "$STAMP"
