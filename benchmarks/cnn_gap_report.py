"""The cnn 99% gap (issue 14): where SRigL loses against RigL, from the ``cnn-gap`` grid.

    python benchmarks/cnn_gap_report.py --runs runs/cnn-gap --out docs/reproduction/cnn_gap.md

Reads every finished run of ``python -m srigl_np.experiments --preset cnn-gap`` (cnn,
99% sparsity, 3 epochs: static, RigL, SRigL without ablation, SRigL γ_sal 0.3/0.7/0.95
in the authors' loop "step", RigL and SRigL γ0.3 also in RigL's loop "skip"; seeds 0-2),
prints markdown and, with ``--out``, writes it atomically (an existing file only with
``--force``). Needs NumPy and srigl_np, not torch or matplotlib; trains nothing.

The tables:

1. Test accuracy per setting (method, γ_sal, loop) over its finished seeds: mean ± sample
   std, each seed's value, the active neurons and ITOP at the end (metrics.json's last
   epoch), and the difference to RigL in the same loop (static, which has no update
   step, against RigL "step"): of the means, and paired, seed by seed, over the seeds
   both have.
2. Per layer, from the audit trails (RigL and SRigL settings): neurons, active neurons
   after the last update (mean, and per seed), fan-in (SRigL: the constant k, before
   the first update → after the last, so a k that ablation raised shows; RigL: the
   min-max range after the last update), the layer's ITOP at the end, the first update
   step that ablated a neuron (per seed; SRigL only), and the budget use: nnz after the
   last update against the layer's ERK budget B (what static and RigL hold) and
   against its size.
3. Over training, one seed (seed 0 where it finished) of SRigL γ0.3, γ0.95 and without
   ablation: per layer, active neurons and k at the first, 25%, 50%, 75% and last
   update.
4. The two loops: RigL and SRigL γ0.3 with the optimizer stepping on an update step
   ("step", the authors') and skipping it ("skip"): mean ± std each, the per-seed
   difference step − skip and its mean.

A run counts only once finished (``experiments.is_finished``) and when its config
agrees with its setting (method, ablation, γ_sal, sparsity, ERK, epochs, lr, seed, loop
and no gradient accumulation; a run that records no loop is read as "skip", the only
loop trainers had before it was recorded); the others are listed at the end, as "not
run yet", unfinished, or why they were left out. Runs that are symlinks (taken over
from an earlier grid) are named there.
"""

import argparse
import json
import os
import sys

import numpy as np

from srigl_np import experiments
from srigl_np.dst.trail import read_trail
from srigl_np.fileio import atomic_write

PRESET = "cnn-gap"
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
# Section 3's settings: (method, γ_sal, loop).
SERIES = (("srigl", 0.3, "step"), ("srigl", 0.95, "step"), ("srigl-noabl", 0.3, "step"))
LOOPED = (("rigl", None), ("srigl", 0.3))   # section 4: (method, γ_sal)


# -- reading the runs ---------------------------------------------------------------------

def _setting(run):
    return run["method"], run["gamma_sal"], run["loop"]


def setting_label(setting):
    method, gamma, loop = setting
    label = {"static": "static", "rigl": "RigL", "set": "SET", "dense": "dense",
             "srigl-noabl": "SRigL, no ablation"}.get(method)
    if label is None:
        label = f"SRigL γ{gamma:g}"
    return label + (f" ({loop})" if loop else "")


def config_mismatch(run, config):
    """Why a finished run's recorded config is not its grid setting, or None."""
    if not config:
        return None   # nothing recorded to check against
    method = "srigl" if run["method"].startswith("srigl") else run["method"]
    wrong = []
    checks = [("method", config.get("method"), method),
              ("seed", config.get("seed"), run["seed"]),
              ("epochs", config.get("epochs"), run["epochs"])]
    if run["method"] != "dense":
        checks += [("sparsity", config.get("sparsity"), run["sparsity"]),
                   ("distribution", config.get("distribution"), "erk")]
    if method == "srigl":
        checks.append(("no_ablation", bool(config.get("no_ablation")),
                       run["method"] == "srigl-noabl"))
        if run["method"] == "srigl":   # γ_sal does nothing without ablation
            checks.append(("gamma_sal", config.get("gamma_sal"), run["gamma_sal"]))
    if run["loop"] is not None:
        checks += [("optimizer_on_update", config.get("optimizer_on_update", "skip"),
                    run["loop"]),
                   ("grad_accumulation", config.get("grad_accumulation", 1), 1)]
    checks.append(("lr", config.get("lr"), run["lr"]))
    for key, got, want in checks:
        same = (got is not None and np.isclose(got, want)) if isinstance(want, float) \
            else got == want
        if not same:
            wrong.append(f"{key} {got!r}, the grid {want!r}")
    return "; ".join(wrong) or None


def load_runs(root, preset=PRESET):
    """One dict per run of the grid: run, name, out, status ("ok", "not run yet",
    "unfinished", "left out"), why, link (its target for a symlink), metrics, trail."""
    loaded = []
    for run in experiments.grid(preset):
        name = experiments.run_name(run)
        out = os.path.join(root, name)
        entry = {"run": run, "name": name, "out": out, "status": "ok", "why": "",
                 "link": os.readlink(out) if os.path.islink(out) else None,
                 "metrics": None, "trail": None}
        loaded.append(entry)
        if not os.path.exists(out):
            entry["status"] = "not run yet"
            if entry["link"]:
                entry["why"] = f"a symlink to {entry['link']}, which does not exist"
            continue
        if not experiments.is_finished(run, out):
            entry["status"] = "unfinished"
            try:
                with open(os.path.join(out, "metrics.json")) as f:
                    done = len(json.load(f).get("epochs", ()))
                entry["why"] = f"{done} of {run['epochs']} epochs"
            except (OSError, ValueError):
                entry["why"] = "no epoch finished"
            continue
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        entry["metrics"] = metrics
        wrong = config_mismatch(run, metrics.get("config"))
        if wrong:
            entry["status"], entry["why"] = "left out", f"its config differs: {wrong}"
            continue
        if run["method"] not in ("dense", "static"):
            try:
                entry["trail"] = read_trail(os.path.join(out, "audit.jsonl"))
            except (OSError, ValueError) as exc:
                entry["why"] = f"audit trail unreadable ({exc}); accuracy only"
    return loaded


def _by_setting(loaded):
    """{setting: [entries]} in grid order, every setting of the grid present."""
    settings = {}
    for entry in loaded:
        settings.setdefault(_setting(entry["run"]), []).append(entry)
    return settings


def _ok(entries):
    return sorted((e for e in entries if e["status"] == "ok"), key=lambda e: e["run"]["seed"])


def erk_budgets(model, sparsity):
    """{layer: ERK budget B} (srigl_np.erk_table), or {} when it cannot be computed."""
    try:
        from srigl_np import erk_table

        return {row["layer"]: row["budget"] for row in erk_table.layer_rows(model, sparsity)}
    except Exception:   # the report stands without the column
        return {}


# -- formatting ---------------------------------------------------------------------------

def _mean_std(values, digits=2):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _signed(value, digits=2):
    return "-" if value is None else f"{value:+.{digits}f}"


def _per_seed(pairs, fmt="{:.2f}"):
    """'s0 81.74, s1 80.02' from [(seed, value)]."""
    return ", ".join(f"s{seed} " + fmt.format(value) for seed, value in pairs) or "-"


def _same_or_list(values):
    """One value when the seeds agree, else them all, comma-separated."""
    values = [str(v) for v in values]
    return values[0] if len(set(values)) == 1 else ", ".join(values)


def _active_text(pairs):
    """'214/234' when every seed ends with it, else 's0 214/234, s1 213/234'."""
    if len({a for _, a in pairs}) == 1:
        return pairs[0][1]
    return _per_seed(pairs, "{}")


def _fan_in_text(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _accuracy(entry):
    return 100 * entry["metrics"]["test_accuracy"]


def _last_epoch(entry):
    return entry["metrics"]["epochs"][-1]


def _paired(a_entries, b_entries):
    """[(seed, a − b)] over the seeds both lists have."""
    b = {e["run"]["seed"]: _accuracy(e) for e in b_entries}
    return [(e["run"]["seed"], _accuracy(e) - b[e["run"]["seed"]])
            for e in a_entries if e["run"]["seed"] in b]


# -- 1. accuracy --------------------------------------------------------------------------

def accuracy_rows(loaded, root):
    """One dict per setting, grid order: setting, seeds, accuracies (per seed), mean, std
    (as experiments.summarise over the runs that count), active, itop, delta, paired."""
    settings = _by_setting(loaded)
    usable = [e["run"] for e in loaded if e["status"] == "ok"]
    summary = {(r["method"], r["gamma_sal"], r["loop"]): r
               for r in experiments.summarise(usable, root)}
    rows = []
    for setting, entries in settings.items():
        ok = _ok(entries)
        s = summary.get(setting, {})
        method, _, loop = setting
        rigl = settings.get(("rigl", None, loop or "step"), [])
        rigl_ok = _ok(rigl)
        delta = paired = None
        if method != "rigl" and ok and rigl_ok:
            delta = float(np.mean([_accuracy(e) for e in ok])
                          - np.mean([_accuracy(e) for e in rigl_ok]))
            paired = _paired(ok, rigl_ok)
        rows.append({
            "setting": setting, "seeds": [e["run"]["seed"] for e in ok],
            "accuracies": [(e["run"]["seed"], _accuracy(e)) for e in ok],
            "mean": s.get("mean"), "std": s.get("std"),
            "active": [(e["run"]["seed"], f"{_last_epoch(e).get('active_neurons', '-')}/"
                                          f"{_last_epoch(e).get('neurons', '-')}")
                       for e in ok],
            "itop": [100 * _last_epoch(e)["itop"] for e in ok
                     if _last_epoch(e).get("itop") is not None],
            "delta": delta, "paired": paired,
            "rigl_loop": None if method == "rigl" else (loop or "step"),
        })
    return rows


def accuracy_markdown(rows):
    body = []
    for r in rows:
        if not r["seeds"]:
            body.append([setting_label(r["setting"]), 0, "not run yet", "-", "-", "-", "-",
                         "-"])
            continue
        accuracy = f"{r['mean']:.2f}" + ("" if r["std"] is None else f" ± {r['std']:.2f}")
        paired = "-"
        if r["paired"]:
            paired = (f"{_signed(float(np.mean([d for _, d in r['paired']])))} "
                      f"({_per_seed(r['paired'], '{:+.2f}')})")
        delta = "-" if r["rigl_loop"] is None else _signed(r["delta"])
        if r["delta"] is not None and r["setting"][2] is None:
            delta += " (vs RigL step)"
        body.append([setting_label(r["setting"]), len(r["seeds"]), accuracy,
                     _per_seed(r["accuracies"]), _active_text(r["active"]),
                     _mean_std(r["itop"], 1), delta, paired])
    return _table(["setting", "seeds", "test accuracy % (mean ± std)", "per seed",
                   "active neurons at the end", "ITOP % at the end",
                   "Δ RigL same loop (means, pp)", "Δ RigL paired (pp, per seed)"], body)


# -- 2. per layer -------------------------------------------------------------------------

def _layers(records):
    by_layer = {}
    for r in records:
        by_layer.setdefault(r["layer"], []).append(r)
    return by_layer


def layer_rows(loaded, budgets=None):
    """Per (setting, layer) of the settings with audit trails, over their usable seeds."""
    budgets = budgets or {}
    rows = []
    for setting, entries in _by_setting(loaded).items():
        ok = [e for e in _ok(entries) if e["trail"]]
        if setting[0] in ("static", "dense") or not ok:
            continue
        per_layer = {}
        for e in ok:
            for layer, rs in _layers(e["trail"]).items():
                per_layer.setdefault(layer, []).append((e["run"]["seed"], rs))
        for layer, seeds in per_layer.items():
            lasts = [rs[-1] for _, rs in seeds]
            srigl = lasts[0]["method"] == "srigl"
            if srigl:
                fan_in = [f"{_fan_in_text(rs[0]['fan_in_before'])} → "
                          f"{_fan_in_text(rs[-1]['fan_in_after'])}"
                          if rs[0]["fan_in_before"] != rs[-1]["fan_in_after"]
                          else _fan_in_text(rs[-1]["fan_in_after"]) for _, rs in seeds]
                first = [next((r["step"] for r in rs if r["ablated"]), None)
                         for _, rs in seeds]
            else:
                fan_in = [_fan_in_text(rs[-1]["fan_in_after"]) for _, rs in seeds]
                first = None
            nnz = [r["nnz"] for r in lasts]
            rows.append({
                "setting": setting, "layer": layer, "neurons": lasts[0]["neurons"],
                "seeds": [seed for seed, _ in seeds],
                "active": [r["active_neurons"] for r in lasts],
                "fan_in": fan_in, "srigl": srigl,
                "itop": [100 * r["itop"] for r in lasts],
                "first_ablation": first,
                "nnz": nnz, "size": lasts[0]["size"], "budget": budgets.get(layer),
            })
    return rows


def layer_markdown(rows):
    body = []
    for r in rows:
        active = f"{np.mean(r['active']):.1f}"
        if len(r["active"]) > 1:
            active += f" ({', '.join(map(str, r['active']))})"
        if r["first_ablation"] is None:
            first = "n/a"
        else:
            first = ", ".join("-" if f is None else str(f) for f in r["first_ablation"])
        nnz = float(np.mean(r["nnz"]))
        budget = "-" if not r["budget"] else \
            f"{nnz:.0f} / {r['budget']} ({100 * nnz / r['budget']:.0f}%)"
        body.append([setting_label(r["setting"]), r["layer"], r["neurons"],
                     ", ".join(f"s{s}" for s in r["seeds"]), active,
                     ("k " if r["srigl"] else "") + _same_or_list(r["fan_in"]),
                     f"{np.mean(r['itop']):.1f}", first, budget,
                     f"{100 * nnz / r['size']:.2f}%"])
    return _table(["setting", "layer", "neurons", "seeds", "active at the end (mean, "
                   "per seed)", "fan-in (SRigL: k first → last; RigL: range at the end)",
                   "layer ITOP % at the end", "first ablation (step, per seed)",
                   "nnz / ERK budget B", "nnz / size"], body)


# -- 3. over steps ------------------------------------------------------------------------

def _picks(n, quantiles=QUANTILES):
    return list(dict.fromkeys(round(q * (n - 1)) for q in quantiles))


def series(loaded, settings=SERIES, prefer_seed=0):
    """[(setting, seed, steps, {layer: [(active, k text)]})]; seed ``prefer_seed`` where
    it is usable, else the lowest usable one; settings without one give seed None."""
    out = []
    by_setting = _by_setting(loaded)
    for setting in settings:
        ok = [e for e in _ok(by_setting.get(setting, [])) if e["trail"]]
        if not ok:
            out.append((setting, None, [], {}))
            continue
        entry = next((e for e in ok if e["run"]["seed"] == prefer_seed), ok[0])
        layers = _layers(entry["trail"])
        steps = sorted({r["step"] for r in entry["trail"]})
        picked = [steps[i] for i in _picks(len(steps))]
        cells = {}
        for layer, rs in layers.items():
            at = {r["step"]: r for r in rs}
            cells[layer] = [(at[s]["active_neurons"], _fan_in_text(at[s]["fan_in_after"]))
                            if s in at else None for s in picked]
        out.append((setting, entry["run"]["seed"], picked, cells))
    return out


def series_markdown(items):
    parts = []
    for setting, seed, steps, cells in items:
        title = f"**{setting_label(setting)}**"
        if seed is None:
            parts.append(f"{title}: not run yet\n")
            continue
        body = [[layer] + ["-" if c is None else f"{c[0]} (k {c[1]})" for c in row]
                for layer, row in cells.items()]
        parts.append(f"{title}, seed {seed}: active neurons (k) after the update at step\n\n"
                     + _table(["layer"] + [str(s) for s in steps], body))
    return "\n".join(parts)


# -- 4. the loops -------------------------------------------------------------------------

def loop_rows(loaded, looped=LOOPED):
    by_setting = _by_setting(loaded)
    rows = []
    for method, gamma in looped:
        step = _ok(by_setting.get((method, gamma, "step"), []))
        skip = _ok(by_setting.get((method, gamma, "skip"), []))
        rows.append({"setting": (method, gamma, None),
                     "step": [(e["run"]["seed"], _accuracy(e)) for e in step],
                     "skip": [(e["run"]["seed"], _accuracy(e)) for e in skip],
                     "step_itop": [100 * _last_epoch(e)["itop"] for e in step
                                   if _last_epoch(e).get("itop") is not None],
                     "skip_itop": [100 * _last_epoch(e)["itop"] for e in skip
                                   if _last_epoch(e).get("itop") is not None],
                     "paired": _paired(step, skip)})
    return rows


def loop_markdown(rows):
    body = []
    for r in rows:
        def acc(pairs):
            if not pairs:
                return "not run yet"
            return f"{_mean_std([a for _, a in pairs])} (n {len(pairs)})"
        paired = r["paired"]
        body.append([setting_label(r["setting"]), acc(r["step"]), acc(r["skip"]),
                     f"{_mean_std(r['step_itop'], 1)} / {_mean_std(r['skip_itop'], 1)}",
                     _per_seed(paired, "{:+.2f}"),
                     _signed(float(np.mean([d for _, d in paired]))) if paired else "-"])
    return _table(["method", "step: accuracy %", "skip: accuracy %",
                   "ITOP % at the end (step / skip)", "step − skip per seed (pp)",
                   "mean paired step − skip (pp)"], body)


# -- the report ---------------------------------------------------------------------------

def status_markdown(loaded):
    lines = []
    for e in loaded:
        if e["status"] != "ok" or e["why"]:
            lines.append(f"- `{e['name']}`: {e['status']}" + (f" ({e['why']})" if e["why"]
                                                                else ""))
    links = [e for e in loaded if e["link"] and e["status"] == "ok"]
    if links:
        lines.append("")
        lines += [f"- `{e['name']}` is a symlink to `{e['link']}` (an earlier grid's run "
                  f"of the same setting)" for e in links]
    return "\n".join(lines) + "\n" if lines else "Every run of the grid is finished.\n"


def report(root, preset=PRESET, budgets=None):
    """The markdown report of the runs under ``root``. ``budgets``: {layer: B}; None
    computes them with srigl_np.erk_table for the grid's model and sparsity."""
    loaded = load_runs(root, preset)
    if budgets is None:
        sparse = [e["run"] for e in loaded if e["run"]["method"] != "dense"]
        budgets = erk_budgets(sparse[0]["model"], sparse[0]["sparsity"]) if sparse else {}
    done = sum(e["status"] == "ok" for e in loaded)
    model = loaded[0]["run"] if loaded else {}
    parts = [
        f"# The cnn 99% gap: `{preset}` grid\n",
        f"Generated by `python benchmarks/cnn_gap_report.py --runs {root}`: "
        f"{done} of {len(loaded)} runs finished and counted "
        f"({model.get('model')}, {100 * model.get('sparsity', 0):g}% sparsity, ERK, "
        f"{model.get('epochs')} epochs, lr {model.get('lr')}). Loops: \"step\" (the "
        f"optimizer also steps on an update step, the authors' loop) and \"skip\" (it "
        f"skips it, RigL's). pp: percentage points.\n",
        "## 1. Test accuracy\n",
        "Per setting over its finished seeds; Δ RigL: this setting minus RigL in the "
        "same loop (static: RigL step), of the means and paired over common seeds.\n",
        accuracy_markdown(accuracy_rows(loaded, root)),
        "## 2. Per layer, at the end of training (audit trails)\n",
        "Fan-in: SRigL's constant k, shown \"before the first update → after the last\" "
        "where ablation raised it (k = floor(B / active neurons)); RigL's min-max. "
        "nnz / B: the weights the layer holds against its ERK budget B (what static and "
        "RigL hold). First ablation: the first update after which a neuron was "
        "ablated (\"-\": none; n/a: RigL does not ablate, its neurons empty by pruning).\n",
        layer_markdown(layer_rows(loaded, budgets)),
        "## 3. Over training\n",
        "At the first, 25%, 50%, 75% and last topology update.\n",
        series_markdown(series(loaded)),
        "## 4. The two loops\n",
        "Step: the optimizer also steps on an update step (the authors' loop, the "
        "trainer's default); skip: it does not (RigL's). Paired over the seeds both "
        "loops have.\n",
        loop_markdown(loop_rows(loaded)),
        "## Runs not counted, and where runs came from\n",
        status_markdown(loaded),
    ]
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/cnn_gap_report.py",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/cnn-gap",
                        help="the grid's directory (default: %(default)s)")
    parser.add_argument("--out", help="also write the markdown here (atomically)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite an existing --out")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs):
        parser.error(f"--runs {args.runs}: no such directory")
    if args.out and os.path.exists(args.out) and not args.force:
        parser.error(f"--out {args.out} exists; pass --force to overwrite it")
    text = report(args.runs)
    print(text, end="")
    if args.out:
        atomic_write(args.out, lambda f: f.write(text.encode()))
        print(f"\nwritten: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
