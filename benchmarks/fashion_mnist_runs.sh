#!/usr/bin/env bash
# The accuracy runs reported for issues 2 and 3, on the full Fashion-MNIST
# (Debian: apt-get install dataset-fashion-mnist). Runs go to ${RUNS:-runs}/.
#   bash benchmarks/fashion_mnist_runs.sh mlp      # dense mlp + 90% ERK srigl/rigl/static, 3 seeds
# THREADS=n sets --threads (0: library default); SKIP_DONE=1 skips runs already complete.
#   bash benchmarks/fashion_mnist_runs.sh cnn      # dense cnn, seed 0
# then: python benchmarks/summarize_runs.py runs/*
set -euo pipefail
RUNS=${RUNS:-runs}
common=(--dataset fashion-mnist --batch-size 128 --progress off --threads ${THREADS:-0})
case "${1:-mlp}" in
  mlp)
    for seed in 0 1 2; do
      for method in dense srigl rigl static; do
        [ -f "$RUNS/mlp-$method-s$seed/metrics.json" ] && [ "${SKIP_DONE:-0}" = 1 ] &&
          python -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(len(m['epochs']) != 20)" \
            "$RUNS/mlp-$method-s$seed/metrics.json" && continue
        sparse=(--sparsity 0.9 --distribution erk)
        [ "$method" = dense ] && sparse=()
        python -m srigl_np.train --model mlp --method "$method" "${sparse[@]}" \
          --epochs 20 --lr 0.1 --seed "$seed" "${common[@]}" \
          --out "$RUNS/mlp-$method-s$seed"
      done
    done ;;
  cnn)
    python -m srigl_np.train --model cnn --method dense --epochs 10 --lr 0.05 --seed 0 \
      "${common[@]}" --out "$RUNS/cnn-dense-s0" ;;
  *) echo "usage: $0 {mlp|cnn}" >&2; exit 2 ;;
esac
