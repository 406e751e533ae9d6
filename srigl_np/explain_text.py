"""The text of ``python -m srigl_np.explain``: one update's trace as lines, step by step.

The steps carry the one numbering of ``srigl_np.dst.steps.STEPS``, the order the code
runs them (the drop fraction, the schedule's, comes first, unnumbered); RigL and SET print
steps 1 and 5.

``explain(layer, result, schedule)`` turns an update's ``dst.UpdateTrace`` into the
printed explanation (each step with the formula that gave its numbers, the result, and
the masks before and after as character grids); ``position_codes`` gives the grids'
(and the plot's) one character per input. Only reads the trace: no decision is made
here. The layer, the update and the command line are ``srigl_np.explain``'s.
"""

import math
import textwrap

import numpy as np

from .dst.steps import STEPS

__all__ = ["ABLATED", "ABSENT", "CAPPED", "GROWN", "KEPT", "LEGEND_AFTER", "MAX_COLS",
           "MAX_ROWS", "METHOD_NAMES", "PRUNED", "REGROWN", "as_rows", "explain",
           "position_codes", "shape_text"]

METHOD_NAMES = {"srigl": "SRigL", "rigl": "RigL", "set": "SET"}
# One character per input in the "after" grid (the "before" grid uses # and .).
KEPT, PRUNED, CAPPED, GROWN, REGROWN, ABSENT, ABLATED = "#-c+r.x"
LEGEND_AFTER = (f"{KEPT} kept  {PRUNED} pruned  {CAPPED} removed by the cap  {GROWN} grown  "
                f"{ABSENT} absent  {ABLATED} ablated neuron",
                f"{REGROWN} regrown (dropped, then grown back with its old value)")
MAX_ROWS, MAX_COLS = 24, 40   # the grids' limits: neurons shown, inputs per row


# -- the explanation ----------------------------------------------------------------------

def explain(layer, result, schedule, max_rows=MAX_ROWS, max_cols=MAX_COLS):
    """The lines printed for one update: header, the steps of STEPS in order, result, grids.

    schedule: (alpha, step, t_end, drop_fraction, given) with ``given`` True when the drop
    fraction was passed directly; max_rows, max_cols: the grids' limits.
    """
    trace = result.trace
    rows = as_rows(layer.mask)
    lines = [f"{METHOD_NAMES[layer.method]} update of {layer.title}",
             f"  {layer.before}" if layer.before else None,
             f"  nnz {int(layer.mask.sum())} of N = {layer.mask.size}, target sparsity "
             f"{_num(layer.sparsity)}",
             f"  gradient: {layer.gradient_note}"]
    lines = [line for line in lines if line is not None]
    lines += [f"  note: {note}" for note in layer.notes]
    lines.append("")
    lines += _drop_fraction_lines(*schedule)
    lines += _prune_lines(layer, trace)
    if layer.method == "srigl":
        lines += _ablation_lines(layer, result, trace, rows)
        lines += _fan_in_lines(layer, trace, rows)
        lines += _cap_lines(layer, trace)
        lines += _regrowth_lines(layer, result, trace)
    else:
        lines += _regrowth_lines(layer, result, trace)
        lines.append("   no saliency, ablation, constant fan-in or cap: the fan-in of each "
                     "neuron is free to vary")
    lines += _result_lines(layer, result, trace, rows)
    lines.append("")
    lines += _grid_lines(layer, result, trace, max_rows, max_cols)
    return lines


def _drop_fraction_lines(alpha, step, t_end, drop_fraction, given):
    if given:
        return [f"drop fraction: d = {_num(drop_fraction)} (given; the schedule is "
                f"α/2·(1 + cos(π·t/T_end)))"]
    return [f"drop fraction: d = α/2·(1 + cos(π·t/T_end)) = {_num(alpha)}/2·(1 + "
            f"cos(π·{step}/{t_end})) = {_num(drop_fraction)}"]


def _prune_lines(layer, trace):
    lines = [f"{_step('magnitude_keep')}: n_ones = {trace.n_ones}, n_prune = "
             f"floor({trace.n_ones}·{_num(trace.drop_fraction)}) = "
             f"{math.floor(trace.n_ones * trace.drop_fraction)}, n_keep = "
             f"{trace.n_ones - math.floor(trace.n_ones * trace.drop_fraction)}"]
    if trace.n_keep < trace.n_ones - math.floor(trace.n_ones * trace.drop_fraction):
        lines.append(f"   only {trace.n_nonzero} active weights are non-zero, so n_keep = "
                     f"{trace.n_keep} and n_prune is raised to {trace.n_prune} (a zero weight "
                     f"is never kept by magnitude)")
    kept = np.abs(layer.weight.reshape(layer.weight.shape[0], -1))[trace.kept_by_magnitude]
    smallest = f" (smallest kept |W| {_num(kept.min())})" if kept.size else ""
    lines.append(f"   the {trace.n_keep} largest |W| of the layer are kept{smallest}, the "
                 f"other {trace.n_prune} dropped")
    return lines


def _ablation_lines(layer, result, trace, rows_before):
    n, dense_fan_in = trace.kept_by_magnitude.shape
    lines = [f"{_step('ablate')}:"]
    if trace.salient_counts is None:
        return lines + [f"   ablation off ({layer.ablation_off}): every neuron stays active"]
    lines += [f"   salient = the {trace.n_keep} kept by |W| ∪ the {trace.n_prune} largest |G| "
              f"of the layer, kept or not",
              "   (not RigL's keep-and-grow set: a top |G| on a kept weight adds nothing)",
              *_wrap(f"salient weights per neuron: {_per_neuron(trace.salient_counts)}"),
              f"   budget B = floor(N·(1 - s)) = floor({n * dense_fan_in}·"
              f"{_num(1 - layer.sparsity)}) = {trace.budget}, k0 = floor(B/n) = "
              f"floor({trace.budget}/{n}) = {trace.k0}",
              f"   threshold = max(1, floor(γ_sal·k0)) = max(1, floor({_num(trace.gamma_sal)}·"
              f"{trace.k0})) = {trace.threshold} salient weight"
              + ("s" if trace.threshold != 1 else "")]
    reaching = int(np.count_nonzero(trace.salient_counts >= trace.threshold))
    fewest = _count(trace.min_active, "neuron") + " stay" + _verb_s(trace.min_active)
    lines.append(f"   at least min(n, floor(B/F) + 1) = min({n}, floor({trace.budget}/"
                 f"{dense_fan_in}) + 1) = {fewest} active:")
    if trace.threshold_lowered:
        lines.append(f"   only {reaching} reach {trace.threshold}, so the threshold is lowered "
                     f"to {trace.threshold_used}, the count of the "
                     f"{_ordinal(trace.min_active)} most salient neuron")
    else:
        lines.append(f"   {reaching} reach the threshold, so it is not lowered")
    reaching = int(np.count_nonzero(trace.salient_counts >= trace.threshold_used))
    if reaching > trace.max_active:
        lines += _wrap(f"at most max(1, B) = {_count(trace.max_active, 'neuron')} "
                       f"stay{_verb_s(trace.max_active)} "
                       f"(fan-in >= 1): the {trace.max_active} most salient of the {reaching} "
                       f"(ties: the lower neuron)")
    ablated = trace.ablated
    was_empty = ~rows_before.any(axis=1)
    returned = np.flatnonzero(was_empty & trace.active)
    if ablated.size:
        stays = [f"{i} ({'stays ablated, ' if was_empty[i] else ''}"
                 f"{trace.salient_counts[i]} salient)" for i in ablated]
        lines += _wrap(f"ablated: neuron{'s' if ablated.size > 1 else ''} "
                       f"{_listed(stays, noun='ablated')}")
    else:
        lines.append("   ablated: none")
    if returned.size:
        back = [f"{i} ({trace.salient_counts[i]} salient)" for i in returned]
        lines += _wrap(f"back: neuron{'s' if returned.size > 1 else ''} "
                       f"{_listed(back, noun='back')} had no weights and "
                       f"return{'s' if returned.size == 1 else ''}")
    lost = int(np.count_nonzero(trace.kept_by_magnitude[~trace.active]))
    if lost:
        kept = as_rows(result.mask & layer.mask & ~result.regrown)
        instead = int(np.count_nonzero(kept & ~trace.kept_by_magnitude))
        text = (f"the {_count(lost, 'weight')} the ablated neurons kept by |W| go with them; "
                + (f"the active neurons keep their next {instead} largest |W| in their place"
                   if instead else "the active neurons have no other non-zero weight to keep "
                                   "in their place"))
        lines += _wrap(text)
    return lines


def _fan_in_lines(layer, trace, rows_before):
    n_active = int(trace.active.sum())
    dense_fan_in = trace.kept_by_magnitude.shape[1]
    counts = rows_before.sum(axis=1)
    before = np.unique(counts[counts > 0])
    was = _was(trace.fan_in, before)
    return [f"{_step('new_fan_in')}: k = min(F, max(1, floor(B/n_active))) = min({dense_fan_in}, "
            f"max(1, floor({trace.budget}/{n_active}))) = {trace.fan_in}{was}"]


def _was(value, before):
    """' (was 4)', ' (unchanged)' or ' (was 2..4)' for the fan-in before the update."""
    if before.size == 1:
        return " (unchanged)" if before[0] == value else f" (was {before[0]})"
    return f" (was {before[0]}..{before[-1]})" if before.size else ""


def _regrowth_lines(layer, result, trace):
    n = layer.weight.shape[0]
    growth = (result.grown | result.regrown).reshape(n, -1)
    if layer.method == "srigl":
        head = (f"{_step('regrow')}: each active neuron grows k - kept weights at "
                f"its largest |G|\n   among the inputs it does not keep (new weights start "
                f"at 0)")
    elif layer.method == "rigl":
        head = (f"{_step('regrow')}: the {trace.n_prune} largest |G| of the layer "
                f"among the positions\n   not kept (new weights start at 0)")
    else:
        head = (f"{_step('regrow', 'regrow at random')}: {trace.n_prune} positions drawn uniformly from "
                f"those not kept (new weights start at 0)")
    lines = head.split("\n")
    growers = np.flatnonzero(trace.grown_counts)
    parts = [f"neuron {i} grows {trace.grown_counts[i]} (input"
             f"{'s' if trace.grown_counts[i] > 1 else ''} "
             f"{_listed(np.flatnonzero(growth[i]).tolist(), limit=6)})" for i in growers]
    lines += _wrapped(parts, limit=8, noun="growing neurons") if parts else \
        ["   no neuron grows"]
    regrown = np.argwhere(result.regrown.reshape(n, -1))
    if regrown.size:
        old = layer.weight.reshape(n, -1)
        spots = [f"neuron {i} input {j} ({_num(old[i, j])})" for i, j in regrown]
        lines += _wrap(f"regrown (dropped, then grown back with its old value): "
                       f"{_listed(spots, limit=6, noun='regrown')}")
    return lines


def _cap_lines(layer, trace):
    lines = [f"{_step('cap_fan_in')}: a neuron that kept more than k weights keeps its k "
             "largest |W|"]
    capped = np.flatnonzero(trace.capped_counts)
    if not capped.size:
        return lines + ["   no neuron kept more than k"]
    rows = np.abs(layer.weight.reshape(layer.weight.shape[0], -1))
    parts = []
    for i in capped:
        dropped = np.flatnonzero(trace.removed_by_cap[i])
        parts.append(f"neuron {i} kept {trace.kept_counts[i] + trace.capped_counts[i]} > "
                     f"k = {trace.fan_in}, drops input{'s' if dropped.size > 1 else ''} "
                     + _listed([f"{j} (|W| {_num(rows[i, j])})" for j in dropped], limit=4))
    lines += _wrapped(parts, limit=8, noun="capped neurons")
    lines.append("   (a capped neuron grows nothing in step 5)")
    return lines


def _step(function, name=None):
    """'N. name' of the step ``function`` runs (dst.steps.STEPS: the one numbering)."""
    number, step_name = next((number, step_name) for number, step_name, step_function
                             in STEPS if step_function == function)
    return f"{number}. {name or step_name}"


def _result_lines(layer, result, trace, rows_before):
    nnz = int(result.mask.sum())
    counts = (f"pruned {int(result.pruned.sum())}, grown {int(result.grown.sum())}, "
              f"regrown {int(result.regrown.sum())}")
    if layer.method == "srigl":
        n_active = int(trace.active.sum())
        return _wrap(f"result: nnz {nnz} = k·n_active = {trace.fan_in}·{n_active} (budget "
                     f"{trace.budget}); {counts}; ablated [{_listed(result.ablated.tolist())}]",
                     indent="")
    after = result.mask.reshape(result.mask.shape[0], -1).sum(axis=1)
    before = rows_before.sum(axis=1)
    return _wrap(f"result: nnz {nnz} (unchanged); {counts}; fan-in {before.min()}.."
                 f"{before.max()} before, {after.min()}..{after.max()} after", indent="")


def position_codes(layer, result, trace):
    """(n, F) array of the "after" grid characters (see LEGEND_AFTER)."""
    n = layer.weight.shape[0]
    before, after = as_rows(layer.mask), as_rows(result.mask)
    regrown = result.regrown.reshape(n, -1)
    codes = np.full(before.shape, ABSENT)
    codes[before & after] = KEPT
    codes[before & ~after] = PRUNED
    if trace.removed_by_cap is not None:
        codes[trace.removed_by_cap & ~after] = CAPPED
    codes[~before & after] = GROWN
    codes[regrown] = REGROWN
    if trace.active is not None:
        codes[~trace.active] = ABLATED
    return codes


def _grid_lines(layer, result, trace, max_rows, max_cols):
    n = layer.weight.shape[0]
    before, after = as_rows(layer.mask), as_rows(result.mask)
    codes = position_codes(layer, result, trace)
    changed = (trace.capped_counts > 0 if trace.capped_counts is not None
               else np.zeros(n, dtype=bool))
    if trace.active is not None:
        changed |= ~trace.active | (~before.any(axis=1) & trace.active)
    # Large layers: the neurons where something happened first, then the others in order.
    shown = np.concatenate([np.flatnonzero(changed), np.flatnonzero(~changed)])[:max_rows]
    shown.sort()
    compact = before.shape[1] > max_cols
    lines = ["masks, one row per neuron, one character per input:"]
    if compact:
        lines += _wrap(f"(F = {before.shape[1]} > --max-cols {max_cols}: each row shows only "
                       f"the inputs its neuron has before or after, the first {max_cols})",
                       indent="  ")
    lines += [f"  before: {KEPT} active  {ABSENT} absent",
              f"  after:  {LEGEND_AFTER[0]}",
              f"          {LEGEND_AFTER[1]}"]
    table = [["neuron", "before", "after"]
             + (["salient"] if trace.salient_counts is not None else [])
             + ["kept"] + (["capped"] if trace.capped_counts is not None else []) + ["grown"]]
    for i in shown:
        columns = (np.flatnonzero(before[i] | after[i])[:max_cols] if compact
                   else np.arange(before.shape[1]))
        old = "".join(np.where(before[i, columns], KEPT, ABSENT))
        new = "".join(codes[i, columns])
        if not new:   # compact, no weight before or after
            new = ABLATED if trace.active is not None and not trace.active[i] else "(none)"
        row = [str(i), old or "(none)", new]
        if trace.salient_counts is not None:
            row.append(str(trace.salient_counts[i]))
        row.append(str(trace.kept_counts[i]))
        if trace.capped_counts is not None:
            row.append(str(trace.capped_counts[i]))
        row.append(str(trace.grown_counts[i]))
        table.append(row)
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        cells = [cell.rjust(w) if c == 0 or c > 2 else cell.ljust(w)
                 for c, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells).rstrip())
    if shown.size < n:
        lines.append(f"  ({n - shown.size} more neurons not shown; those where something "
                     f"happened come first)")
    return lines



# -- formatting helpers ---------------------------------------------------------------

def as_rows(array):
    """``array`` (n, *fan_in_dims) as (n, F) rows."""
    return array.reshape(array.shape[0], -1)


def _num(value):
    return f"{float(value):.3g}"


def shape_text(shape):
    """'10 neurons x 12 inputs', with the per-filter dimensions of a conv layer."""
    n, fan_in = shape[0], math.prod(shape[1:])
    dims = "" if len(shape) == 2 else f" ({'x'.join(map(str, shape[1:]))} per filter)"
    return f"{n} neurons x {fan_in} inputs{dims}"


def _ordinal(k):
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")


def _listed(items, limit=12, noun="in all"):
    items = [str(item) for item in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items)} {noun})"


def _verb_s(count):
    """The -s of a verb whose subject counts ``count`` things: 1 neuron stays, 2 stay."""
    return "s" if count == 1 else ""


def _count(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _wrap(text, indent="   ", width=96):
    """``text`` as lines of at most ``width`` characters, the first indented by ``indent``,
    the others by three spaces more than it."""
    return textwrap.wrap(text, width=width, initial_indent=indent,
                         subsequent_indent=indent + "   ", break_long_words=False,
                         break_on_hyphens=False)


def _wrapped(parts, limit, noun, width=96):
    """``parts`` joined by ", " over lines of at most ``width`` characters, indented 3."""
    lines, line = [], "  "
    shown = parts if len(parts) <= limit else parts[:limit] + [f"... ({len(parts)} {noun})"]
    for k, part in enumerate(shown):
        piece = part + ("," if k < len(shown) - 1 else "")
        if len(line) + 1 + len(piece) > width and line.strip():
            lines.append(line)
            line = "  "
        line += " " + piece
    return lines + [line]


def _per_neuron(counts, limit=16):
    """'0:3 1:4 ...' for up to ``limit`` neurons, else the first ones and a summary."""
    pairs = [f"{i}:{c}" for i, c in enumerate(counts.tolist())]
    if len(pairs) <= limit:
        return " ".join(pairs)
    return (" ".join(pairs[:limit]) + f" ... ({len(pairs)} neurons; min {counts.min()}, "
            f"median {int(np.median(counts))}, max {counts.max()})")
