#!/usr/bin/env bash
# Run timm's own tests/test_models.py against the ascan models (forward, backward, default cfgs,
# features_only, forward_intermediates, torchscript, FX), the bar every timm model passes.
#
#   scripts/timm_conformance.sh /path/to/pytorch-image-models [pytest -k expression]
#
# The timm checkout is read only: its test file is copied into a temporary folder, `import ascan` is
# added so our models are registered, and our model modules join its forward_intermediates list.
set -euo pipefail
TIMM_REPO=${1:?usage: $0 /path/to/pytorch-image-models [-k expression]}
FILTER=${2:-"ascan_ or neonext_"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tests"
if [ -d "$TIMM_REPO/tests" ]; then
    cp "$TIMM_REPO/tests/test_models.py" "$WORK/tests/"
else  # a bare git mirror
    git --git-dir="$TIMM_REPO" show HEAD:tests/test_models.py > "$WORK/tests/test_models.py"
fi
touch "$WORK/tests/__init__.py"
sed -i "0,/^import torch$/s//import torch\nimport ascan  # noqa: F401  registers the ascan models/" "$WORK/tests/test_models.py"
sed -i "0,/^FEAT_INTER_FILTERS = \[/s//FEAT_INTER_FILTERS = ['ascan', 'coatnet', 'neonext',/" "$WORK/tests/test_models.py"
cd "$WORK"
"$ROOT/.venv/bin/python" -m pytest tests/test_models.py -k "$FILTER" -q -p no:cacheprovider -W ignore -n "${JOBS:-2}"
