#!/bin/bash
# GradMatch levers (issue 14), about 5 minutes on 2 cores: the solver thread count on a quiet machine and
# beside 2 busy processes (benchmarks/selection_solver.py, one synthetic 6,000-image class), and the NNLS
# ridge, absolute (the default 0.5, and 0) or relative to the gradients (selection.lam_relative) on real
# last-layer gradients after a warm epoch (benchmarks/selection_overhead.py, 6,000 images, 1-step attack).
set -e
cd "$(dirname "$0")/.."
R=benchmarks/results/gradmatch_levers
PY=${PYTHON:-.venv/bin/python}
mkdir -p $R
for load in 0 2; do for t in 1 2; do
  $PY benchmarks/selection_solver.py --n 6000 --fractions 0.3 --threads $t --load $load \
     --json $R/solver_threads${t}_load${load}.json | tee $R/solver_threads${t}_load${load}.txt
done; done
$PY benchmarks/selection_overhead.py --n 6000 --selection-steps 1 --fractions 0.3 --random-draws 3 \
   --out $R/ridge_abs0.5.json | tee $R/ridge_abs0.5.txt
for lam in 1e-1 1e-2 1e-3; do
$PY benchmarks/selection_overhead.py --n 6000 --selection-steps 1 --fractions 0.3 --random-draws 3 \
   --set selection.lam_relative=true --set selection.lam=$lam --out $R/ridge_rel$lam.json | tee $R/ridge_rel$lam.txt
done
$PY benchmarks/selection_overhead.py --n 6000 --selection-steps 1 --fractions 0.3 --random-draws 3 \
   --set selection.lam=0 --out $R/ridge_abs0.json | tee $R/ridge_abs0.txt
