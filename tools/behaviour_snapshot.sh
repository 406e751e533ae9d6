#!/usr/bin/env bash
# Behaviour snapshot of a srigl_np checkout, for a refactoring's before/after check:
#   tools/behaviour_snapshot.sh TREE OUTDIR      (TREE built in place; $PYTHON, default python)
#   python tools/compare_snapshots.py OUTDIR_BEFORE OUTDIR_AFTER
# It runs one-epoch trainings of static/SET/RigL/SRigL/dense (mlp and cnn, embedded data,
# ΔT 5), then every command on them (audit, condense, explain, erk_table, experiments,
# error paths, a tiny bench) and keeps their outputs and files.
set -u
TREE=$1; OUT=$(realpath -m "$2"); PY=${PYTHON:-python}
[ -e "$OUT" ] && { echo "$OUT exists: give a new directory" >&2; exit 2; }
mkdir -p "$OUT/runs" "$OUT/cli"
cd "$TREE"
export PYTHONHASHSEED=0
run() { local name=$1; shift; "$PY" "$@" > "$OUT/cli/$name.out" 2> "$OUT/cli/$name.err"; echo "rc=$?" >> "$OUT/cli/$name.out"; }
for m in mlp cnn; do for meth in static set rigl srigl dense; do
  extra="--sparsity 0.9"; [ $meth = dense ] && extra=""
  run train-$m-$meth -m srigl_np.train --model $m --method $meth $extra --dataset embedded --epochs 1 --delta 5 --seed 0 --threads 2 --progress off --out "$OUT/runs/$m-$meth"
done; done
for m in mlp cnn; do
  run audit-$m -m srigl_np.audit "$OUT/runs/$m-srigl"
  run auditjson-$m -m srigl_np.audit --json "$OUT/runs/$m-srigl"
  run auditckpt-$m -m srigl_np.audit "$OUT/runs/$m-srigl/checkpoint.npz"
  run condense-$m -m srigl_np.condense "$OUT/runs/$m-srigl" --out "$OUT/runs/$m.npz" --evaluate embedded
  run auditcond-$m -m srigl_np.audit "$OUT/runs/$m.npz"
  layer=0.weight; [ $m = mlp ] && layer=1.weight; run explainrun-$m -m srigl_np.explain --checkpoint "$OUT/runs/$m-srigl" --layer $layer
done
run explain -m srigl_np.explain
run explain-rigl -m srigl_np.explain --method rigl
run explain-conv -m srigl_np.explain --shape 6x2x3x3
run erk -m srigl_np.erk_table
run erk2 -m srigl_np.erk_table --model cnn --sparsity 0.8
run experiments-smoke -m srigl_np.experiments --preset smoke --dataset embedded --out "$OUT/runs/grid" --jobs 2
run experiments-again -m srigl_np.experiments --preset smoke --dataset embedded --out "$OUT/runs/grid" --summary-only
# error paths
run err-audit -m srigl_np.audit /nonexistent
run err-train -m srigl_np.train --sparsity 1.5 --out "$OUT/runs/bad"
run err-condense -m srigl_np.condense "$OUT/runs/mlp-srigl" --out "$OUT/runs/mlp.npz"
run err-explain -m srigl_np.explain --shape 0x3
run err-erk -m srigl_np.erk_table --sparsity 2
run err-bench -m srigl_np.bench --threads 0
run bench-quick -m srigl_np.bench --quick --min-time 0.01 --threads 1 --batch-sizes 1 --shape 64x32
# normalise the paths of this OUT
sed -i "s#$OUT#OUT#g" "$OUT"/cli/*
