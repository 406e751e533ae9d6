#!/usr/bin/env bash
# The accuracy runs reported for issues 2 and 3, on the full Fashion-MNIST
# (Debian: apt-get install dataset-fashion-mnist). Runs go to ${RUNS:-runs}/.
#   bash benchmarks/fashion_mnist_runs.sh mlp      # dense mlp + 90% ERK srigl/rigl/static, 3 seeds
#   bash benchmarks/fashion_mnist_runs.sh cnn      # dense cnn, seed 0
# then: python benchmarks/summarize_runs.py runs/*
set -euo pipefail
RUNS=${RUNS:-runs}
common=(--dataset fashion-mnist --batch-size 128 --progress off)
case "${1:-mlp}" in
  mlp)
    for seed in 0 1 2; do
      python -m srigl_np.train --model mlp --method dense --epochs 20 --lr 0.1 --seed "$seed" \
        "${common[@]}" --out "$RUNS/mlp-dense-s$seed"
      for method in srigl rigl static; do
        python -m srigl_np.train --model mlp --method "$method" --sparsity 0.9 \
          --distribution erk --epochs 20 --lr 0.1 --seed "$seed" "${common[@]}" \
          --out "$RUNS/mlp-$method-s$seed"
      done
    done ;;
  cnn)
    python -m srigl_np.train --model cnn --method dense --epochs 10 --lr 0.05 --seed 0 \
      "${common[@]}" --out "$RUNS/cnn-dense-s0" ;;
  *) echo "usage: $0 {mlp|cnn}" >&2; exit 2 ;;
esac
