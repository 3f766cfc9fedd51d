#!/usr/bin/env bash
# GPU check in one command: the CUDA paths of ascan (fp16/bf16, torch.compile, DDP over NCCL, the dense tasks,
# ONNX export) run on the GPUs of this machine, with one summary table at the end.
#
#   scripts/gpu_check.sh                 # after scripts/setup.sh: uses .venv/bin/ascan and .venv/bin/python
#   ASCAN="ascan" PYTHON=python3 scripts/gpu_check.sh
#
# Steps (each one logged to $WORK/logs/<step>.log; a failed step is reported and the others still run):
#   bench     ascan bench --preset table4-tiny --device cuda --dtype fp16 --compile --batch-sizes 1,16,64
#             --measure-peak   (the paper's Table 4 throughput comparison)
#   classify  200 steps of ascan_tiny, bf16, DDP over all GPUs (--nproc-per-node = GPU count), 224 px, per-GPU
#             batch 64, on a generated ImageFolder tree (train/ and val/ of random 256-px PNGs)
#   segment   20 steps (max_steps; epochs raised so that it binds) of UPerNet + ascan_nano on the garment scenes (generated; from random stand-in garments
#             when Debian's Fashion-MNIST is not installed)
#   detect    20 steps of Cascade Mask R-CNN + ascan_nano on the same scenes
#   export    the classify run to ONNX, checked against PyTorch in onnxruntime
# Then: device name, driver, torch and CUDA versions, and per step ok/FAILED, seconds and its last output line.
#
# Without CUDA it prints one line and exits 2. Exit 0 when every step passed, 1 otherwise.
# GPU_CHECK_WORK=DIR keeps the data, runs and logs there (default: a temporary folder, removed at the end).
# GPU_CHECK_CONFIG_ONLY=1 checks the training commands' options and config keys (each with --print-config)
# without a GPU, training or data: what the test suite runs, so a renamed option fails CI, not the GPU day.
# The CLI is 'ascan <task> <verb>' ('ascan train' is the short form of 'ascan classify train').
set -uo pipefail
cd "$(dirname "$0")/.."

read -ra ASCAN_CMD <<< "${ASCAN:-$([ -x .venv/bin/ascan ] && echo .venv/bin/ascan || echo ascan)}"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
STEPS_CLASSIFY=200
STEPS_DENSE=20
PER_GPU_BATCH=64
IMAGE_SIZE=224
CONFIG_ONLY=${GPU_CHECK_CONFIG_ONLY:-0}

if [ "$CONFIG_ONLY" != 1 ]; then
    if ! NGPU=$("$PYTHON" -c 'import torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(n); raise SystemExit(0 if n else 1)' 2>/dev/null); then
        echo "gpu_check: no CUDA device visible to torch ($PYTHON); nothing to check on this machine"
        exit 2
    fi
else
    NGPU=1
fi

if [ -n "${GPU_CHECK_WORK:-}" ]; then
    WORK=$GPU_CHECK_WORK; mkdir -p "$WORK"
else
    WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK/logs"
RESULTS=()

# run_step NAME COMMAND...: run it, log it, record "name|status|seconds|last line".
run_step() {
    local name=$1; shift
    local start=$SECONDS status=ok
    echo "gpu_check: $name: $*" >&2
    "$@" > "$WORK/logs/$name.log" 2>&1 || status=FAILED
    local last; last=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | cut -c1-90)
    RESULTS+=("$name|$status|$((SECONDS - start))|$last")
}

write_config() {  # the classify run: ascan_tiny as built (no slimming kwargs), bf16, ImageFolder train/val
    cat > "$WORK/classify.yaml" <<EOF
output: $WORK/runs/classify
device: cuda
amp: bf16
compile: "off"
max_steps: $STEPS_CLASSIFY
eval_every: 1000
progress: false
data:
  dataset: imagefolder
  root: $WORK/imagefolder
  train_split: train
  eval_split: val
  image_size: $IMAGE_SIZE
  batch_size: $((PER_GPU_BATCH * NGPU))
  eval_batch_size: 64
  num_workers: 6
model:
  name: ascan_tiny
  kwargs: {}
optim:
  epochs: 1000
  warmup_epochs: 1
EOF
}

make_imagefolder() {  # random 256-px PNGs: train/ (enough for a few batches per epoch) and val/
    "$PYTHON" - "$WORK/imagefolder" "$((PER_GPU_BATCH * NGPU * 4))" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

root, train = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
for split, count in (("train", train), ("val", 64)):
    for i in range(count):
        folder = root / split / f"class{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
EOF
}

fashion_mnist_folder() {  # Debian's Fashion-MNIST, else random stand-ins in its file format
    local installed=/usr/share/datasets/fashion-mnist
    if [ -f "$installed/train-images-idx3-ubyte.gz" ]; then echo "$installed"; return; fi
    "$PYTHON" - "$WORK/fashion-mnist" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from ascan.data.idx import write_idx

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for prefix, n in (("train", 600), ("t10k", 200)):
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
EOF
    echo "$WORK/fashion-mnist"
}

SCENES=(data.scenes.train_scenes=32 data.scenes.test_scenes=8)
write_config
CLASSIFY=("${ASCAN_CMD[@]}" classify train --config "$WORK/classify.yaml" --nproc-per-node "$NGPU")
SEGMENT=("${ASCAN_CMD[@]}" segment train --output "$WORK/runs/segment" --set device=cuda "max_steps=$STEPS_DENSE"
         "optim.epochs=$STEPS_DENSE"
         "data.root=$WORK/scenes" "${SCENES[@]}" progress=false)
DETECT=("${ASCAN_CMD[@]}" detect train --output "$WORK/runs/detect" --set device=cuda "max_steps=$STEPS_DENSE"
        "optim.epochs=$STEPS_DENSE"
        "data.root=$WORK/scenes" "${SCENES[@]}" progress=false)

if [ "$CONFIG_ONLY" = 1 ]; then
    status=0
    for name in CLASSIFY SEGMENT DETECT; do
        declare -n command=$name
        if ! "${command[@]}" --print-config > "$WORK/logs/$name.log" 2>&1; then
            echo "gpu_check: the ${name,,} command is refused: $(tail -n 1 "$WORK/logs/$name.log")"
            status=1
        fi
    done
    [ $status = 0 ] && echo "gpu_check: the training commands' options and config keys are valid"
    exit $status
fi

run_step bench "${ASCAN_CMD[@]}" bench --preset table4-tiny --device cuda --dtype fp16 --compile \
    --batch-sizes 1,16,64 --measure-peak --quiet --out "$WORK/runs/bench"
run_step data make_imagefolder
run_step classify "${CLASSIFY[@]}"
FASHION_MNIST=$(fashion_mnist_folder)
run_step scenes "${ASCAN_CMD[@]}" scenes --root "$WORK/scenes" --fashion-mnist "$FASHION_MNIST" \
    --train-scenes 32 --test-scenes 8 --no-progress
run_step segment "${SEGMENT[@]}"
run_step detect "${DETECT[@]}"
run_step export "${ASCAN_CMD[@]}" export "$WORK/runs/classify" --output "$WORK/ascan_tiny.onnx" --bench-seconds 0

echo
"$PYTHON" - <<'EOF'
import subprocess

import torch

props = torch.cuda.get_device_properties(0)
try:
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, check=True).stdout.splitlines()[0].strip()
except (OSError, subprocess.CalledProcessError, IndexError):
    driver = "unknown (no nvidia-smi)"
print(f"device   {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()} "
      f"({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})")
print(f"driver   {driver}")
print(f"torch    {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
EOF
printf '\n%-9s %-7s %6s  %s\n' step status seconds "last line of output"
failed=0
for row in "${RESULTS[@]}"; do
    IFS='|' read -r name status seconds last <<< "$row"
    printf '%-9s %-7s %6s  %s\n' "$name" "$status" "$seconds" "$last"
    [ "$status" = ok ] || failed=1
done
echo "logs: $WORK/logs (kept with GPU_CHECK_WORK=DIR)"
exit $failed
