#!/usr/bin/env bash
# Build advcoreset's wheel, install it into a fresh virtual environment (no source tree on the path) and
# run what a user runs first: `advcoreset --version` and a tiny training run on the built-in data.
#   bash scripts/check_wheel.sh              # .ci/run calls this after the tests
# Needs the project's .venv (scripts/setup.sh) for the build tools and Fashion-MNIST in
# /usr/share/datasets/fashion-mnist (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

.venv/bin/python -m build --wheel --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log" >&2; exit 1; }
WHEEL=$(ls "$WORK"/dist/advcoreset-*.whl)
echo "built $(basename "$WHEEL")"

python3 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch pinned first, as scripts/setup.sh does (an unpinned install pulls the CUDA build on a CPU machine);
# the wheel's own metadata then only asks for torch>=2.13.
$PIP install -q "torch==2.13.0"
$PIP install -q "$WHEEL"

cd "$WORK"   # no source tree here: the installed wheel is what runs
"$WORK/venv/bin/advcoreset" --version
"$WORK/venv/bin/advcoreset" train --out "$WORK/run" --set data.train_subset=300 --set data.test_subset=100 \
  --set data.val_size=0 --set model.width=8 --set objective.attack.steps=1 --set optim.epochs=2 \
  --set selection.warm_epochs=1 --set selection.interval=1 --set eval.pgd_steps=2 --set eval.every=0 \
  --set eval.autoattack=false --set progress=line --set threads=1
"$WORK/venv/bin/python" - "$WORK/run" <<'EOF'
import json, pathlib, sys
import advcoreset
run = pathlib.Path(sys.argv[1])
assert "site-packages" in advcoreset.__file__, advcoreset.__file__
final = json.loads((run / "results.json").read_text())
print("wheel check: installed from", pathlib.Path(advcoreset.__file__).parent)
print("wheel check: tiny run finished with keys", sorted(final)[:6], "...")
EOF
