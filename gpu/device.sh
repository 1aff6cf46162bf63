#!/usr/bin/env bash
# Execute chapters 10 and 11 on the offline GPU machine from the folder gpu/pack.py made.
#
#   bash gpu/device.sh [PACK]          # PACK defaults to gpu-pack; run from the repository root
#
# Installs the packed wheels that the machine's python3 lacks (pip install --no-index --no-deps),
# points RANEM_DATA at the packed Imagenette subset and RANEM_CACHE at a fresh cache seeded with the
# packed EfficientNet-Lite2 weights, and runs book/_execute.py in gpu mode (RANEM_MODE overrides it:
# RANEM_MODE=quick tests the same path on a CPU). The executed notebooks and a log are copied to
# $OUT when it is set (the device tool brings them back).
set -euo pipefail
PACK=${1:-gpu-pack}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
test -f "$PACK/MANIFEST.json" || { echo "no $PACK/MANIFEST.json: run make gpu-pack first" >&2; exit 1; }
if ! "$PYTHON" -c "import prodigyopt, captum, nbclient, ipykernel, myst_nb" 2>/dev/null; then
    "$PYTHON" -m pip install --no-index --no-deps --quiet "$PACK"/wheels/*.whl
fi
export RANEM_MODE=${RANEM_MODE:-gpu}
export RANEM_DATA="$ROOT/$PACK/data"
export RANEM_CACHE=${RANEM_CACHE:-$(mktemp -d)/ranem-cache}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$RANEM_CACHE/pretrained"
cp "$PACK"/pretrained/* "$RANEM_CACHE/pretrained/"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| CUDA:', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
start=$(date +%s)
"$PYTHON" book/_execute.py book/10_training_at_scale.ipynb book/11_comparing_models.ipynb 2>&1 | tee "${OUT:-/tmp}/gpu-run.log"
echo "chapters 10 and 11 in $(( $(date +%s) - start )) s (RANEM_MODE=$RANEM_MODE)"
if [ -n "${OUT:-}" ]; then
    cp book/10_training_at_scale.ipynb book/11_comparing_models.ipynb "$OUT/"
fi
