#!/usr/bin/env bash
# Set up advcoreset on a fresh machine: .venv with the package, its tools, and Fashion-MNIST.
#   bash scripts/setup.sh            # everything
#   SKIP_DATA=1 bash scripts/setup.sh   # no apt step (point data.root at your own IDX files instead)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first and pinned: a looser requirement pulls gigabytes of CUDA wheels on a CPU machine.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev,tensorboard]"
# torchattacks (standard AutoAttack's parts) declares torchvision, which has no CPU build here and would
# replace torch: it does not import torchvision, so install it without dependencies.
$PIP install -q --no-deps "torchattacks==3.5.1"
.venv/bin/python -c "import torch, advcoreset; print('torch', torch.__version__, '| advcoreset', advcoreset.__version__)"

FMNIST=/usr/share/datasets/fashion-mnist
if [ -n "${SKIP_DATA:-}" ]; then
  echo "SKIP_DATA set: not installing Fashion-MNIST (use --set data.root=/path/to/idx/files)"
elif [ -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST found in $FMNIST"
elif command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  $SUDO apt-get update -qq >/dev/null || true
  if $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    echo "Fashion-MNIST installed in $FMNIST"
  else
    echo "warning: 'apt-get install dataset-fashion-mnist' failed. Put the four IDX files" >&2
    echo "(train-images-idx3-ubyte.gz, ...) in a folder and pass --set data.root=/that/folder" >&2
  fi
else
  echo "warning: apt-get is not available, so Fashion-MNIST was not installed. Download the four IDX" >&2
  echo "files (train-images-idx3-ubyte.gz, ...) yourself and pass --set data.root=/that/folder" >&2
fi
