"""``python -m srigl_np.experiments``: grids of training runs, resumable, summarised over seeds.

A grid is model × method × sparsity × γ_sal × training loop × seed (``--preset
reproduction`` is the one behind docs/reproduction.md, ``--preset cnn-gap`` the cnn 99%
study in it; ``--epochs`` and ``--seeds`` replace a preset's, ``--models`` and ``--methods``
pick part of it). Each run is ``python -m
srigl_np.train`` in its own process and directory
``OUT/<model>-<method>-s<sparsity>-g<gamma>[-skip]-seed<seed>`` ("srigl-noabl" is SRigL
without ablation; dense runs have no sparsity or γ_sal; "-skip" marks a run whose
optimizer skips update steps, ``--optimizer-on-update skip``, RigL's loop, against the
authors' loop, the trainer's default). Runs go seed-major: every setting's first seed
before any setting's second, so a grid cut short has each setting at its first seeds.

Where: ``--jobs N`` local processes at a time (the default), ``--dask ADDRESS`` a Dask
cluster, ``--slurm`` one Slurm job per run through submitit (local job processes where
Slurm is absent); the last two need ``pip install 'srigl_np[cluster]'`` and OUT on a
file system the workers share. Wherever it runs, a finished run is skipped, an
interrupted one resumes from its checkpoint (bit-identical to an uninterrupted run),
one trainer at a time writes a run directory (its ``.claim`` and the trainer's
``.lock``), and a run directory that holds another configuration than requested
(another --dataset, --epochs, ...) is refused before anything starts, never counted
as done. A line per run reports the grid's progress: done, running, failed, queued
and the ETA. A runner holds ``OUT``'s lock (``.lock``) while it trains: a second one on
the same ``OUT`` is refused, naming the first's PID.

Ctrl-C or SIGTERM stops the grid: queued runs are cancelled, running trainers stopped
(``OUT/.stop`` tells tasks on a cluster), and the runner says "interrupted; rerun the
same command to resume" and exits 130 (SIGTERM: 143). Trainers run in their own process
group and die with the process that started them, even one killed with SIGKILL. The
exit status is 1 when any run failed, 2 when the command refuses to start.

The summary groups runs by every setting but the seed (runs whose settings differ are
never pooled as seeds) and gives the final test accuracy as mean ± sample std over the
seeds, the seeds' count, and the active neurons at the end; for SRigL a second table
gives, per layer, the neurons left at the end and the first update that ablated one (from
each run's audit trail). ``--report DIR`` writes ``results.md``, ``results.json`` and
``accuracy_vs_sparsity.png`` (one panel per model; needs matplotlib) there, each
atomically.
"""

import argparse
import importlib.util
import os
import sys

from .. import cli
from ..cli import command, create_parser
from ..data import DATASET_NAMES
from ..fileio import atomic_write, write_json
from ..nn.models import MODEL_NAMES
from ..validation import check_thread_flag
from .executors import dask_executor, parse_param, slurm_executor
from .grid import METHODS, PRESETS, grid, preset_models
from .report import ablation_markdown, ablation_rows, markdown, plot, summarise
from .runner import INTERRUPTED, Interrupted, run_grid, signals_interrupt
from .runs import mismatched, refusal

PROG = "python -m srigl_np.experiments"
# What --report DIR receives.
REPORT_FILES = ("results.md", "results.json", "accuracy_vs_sparsity.png")


def _param(text):
    try:
        return parse_param(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def make_parser():
    parser = create_parser(PROG, __doc__.replace("``", ""))
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reproduction",
                        help="the grid (default: %(default)s)")
    parser.add_argument("--out", default="runs/reproduction", type=cli.path,
                        help="directory of the runs (default: %(default)s)")
    parser.add_argument("--dataset", default="fashion-mnist", choices=DATASET_NAMES,
                        help="--dataset of every run (default: %(default)s)")
    parser.add_argument("--models", nargs="+", help="only these models (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                        help=f"only these methods (default: all; of {', '.join(METHODS)})")
    parser.add_argument("--epochs", type=cli.integer(1),
                        help="--epochs of every run (default: the preset's)")
    parser.add_argument("--seeds", type=cli.integer(0), nargs="+",
                        help="the seeds of every setting (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="--threads of every run, at most the CPUs this process may "
                             "use; 0: library default (default: %(default)s)")
    where = parser.add_mutually_exclusive_group()
    parser.add_argument("--jobs", type=int, default=1,
                        help="local runs at a time, at most the CPUs this process may use; "
                             "with --slurm, local jobs at a time where Slurm is absent "
                             "(default: %(default)s)")
    where.add_argument("--dask", metavar="ADDRESS",
                       help="run on the Dask cluster whose scheduler is at ADDRESS "
                            "(tcp://host:8786); OUT must be shared with its workers")
    where.add_argument("--slurm", action="store_true",
                       help="one Slurm job per run through submitit (local job processes "
                            "where Slurm is absent); OUT must be shared with the nodes")
    parser.add_argument("--slurm-param", metavar="KEY=VALUE", type=_param, nargs="+",
                        action="extend", default=[],
                        help="submitit parameters of every job, e.g. slurm_partition=gpu "
                             "timeout_min=600 mem_gb=8 (default: cpus_per_task=--threads "
                             "timeout_min=1440)")
    parser.add_argument("--report", metavar="DIR", type=cli.path,
                        help="write results.md, results.json and the plot there")
    parser.add_argument("--summary-only", action="store_true",
                        help="train nothing; summarise what is finished")
    return parser


def _runs(parser, args):
    """The runs the flags ask for; a one-line error (exit 2) for models the preset or
    the trainer does not have."""
    runs = [r for r in grid(args.preset, epochs=args.epochs, seeds=args.seeds)
            if (not args.models or r["model"] in args.models)
            and (not args.methods or r["method"] in args.methods)]
    if not runs and args.methods:
        parser.error(f"--methods {' '.join(args.methods)}: --preset {args.preset} has no run "
                     f"of these methods{' for these models' if args.models else ''}")
    if not runs:
        parser.error(f"--models {' '.join(args.models)}: --preset {args.preset} has no run "
                     f"of these models (its models: {', '.join(preset_models(args.preset))})")
    unknown = [m for m in args.models or () if m not in MODEL_NAMES]
    if unknown:
        parser.error(f"--models {' '.join(unknown)}: no such model (the trainer's: "
                     f"{', '.join(MODEL_NAMES)})")
    return runs


def _executor(parser, args):
    """(executor or None for run_grid's own pool, close)."""
    try:
        if args.dask:
            return dask_executor(args.dask)
        if args.slurm:
            return slurm_executor(os.path.join(args.out, ".submitit"), args.jobs,
                                  args.threads, args.slurm_param)
    except ValueError as exc:
        parser.error(str(exc))
    return None, lambda: None


def _train(parser, args, runs):
    """Run the grid; the exit status (0, 1 when a run failed, 128 + signal when told to
    stop)."""
    close = None
    try:
        with signals_interrupt():
            executor, close = _executor(parser, args)
            # One runner per --out (run_grid holds its lock): a second would fail every
            # run its twin is training. Each run directory has its task's claim and its
            # trainer's lock besides.
            outcomes = run_grid(runs, args.out, args.dataset, args.threads,
                                executor=executor, jobs=args.jobs, holder=PROG,
                                say=lambda line: print(line, flush=True))
    except (KeyboardInterrupt, Interrupted) as exc:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return exc.status if isinstance(exc, Interrupted) else 130
    finally:
        if close is not None:
            close()
    failed = [o for o in outcomes if o.failed]
    if failed:
        names = ", ".join(o.name for o in failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(f"{len(failed)} of {len(runs)} runs failed ({names}): see their .log in "
              f"{args.out}", file=sys.stderr)
    return 1 if failed else 0


@command(PROG)
def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        check_thread_flag("--jobs", args.jobs, minimum=1)
        check_thread_flag("--threads", args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    if args.slurm_param and not args.slurm:
        parser.error("--slurm-param is for --slurm")
    runs = _runs(parser, args)
    # Output places are checked before hours of training, not after.
    for flag, directory in (("--out", args.out), ("--report", args.report)):
        if directory is None:
            continue
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            parser.error(f"{flag} {directory}: {exc.strerror or exc}")
        if not os.access(directory, os.W_OK):
            parser.error(f"{flag} {directory} is not writable")
    for name in REPORT_FILES if args.report is not None else ():
        problem = cli.check_output_file("--report", os.path.join(args.report, name))
        if problem:
            parser.error(problem)
    status = 0
    if not args.summary_only:
        found = mismatched(runs, args.out, args.dataset)
        if found:
            parser.error(refusal(*found[0], others=len(found) - 1))
        status = _train(parser, args, runs)
        if status > 1:   # stopped: no summary of a grid cut short
            return status
    rows = summarise(runs, args.out, args.dataset)
    ablation = ablation_rows(runs, args.out, args.dataset)
    picked = "".join(f" --{flag} {' '.join(map(str, values))}"
                     for flag, values in (("models", args.models), ("methods", args.methods),
                                          ("epochs", args.epochs and [args.epochs]),
                                          ("seeds", args.seeds)) if values)
    table = (f"Generated by `python -m srigl_np.experiments --preset {args.preset}{picked}` "
             f"({len(runs)} runs).\n\n## Test accuracy\n\n" + markdown(rows)
             + "\n## Neuron ablation (SRigL)\n\n" + ablation_markdown(ablation))
    print(table)
    if args.report:
        markdown_file, json_file, plot_file = (os.path.join(args.report, name)
                                               for name in REPORT_FILES)
        atomic_write(markdown_file, lambda f: f.write(table.encode()))
        write_json(json_file, {"preset": args.preset, "rows": rows, "ablation": ablation})
        if importlib.util.find_spec("matplotlib") is None:
            print("plot skipped: it needs matplotlib (pip install matplotlib)")
        else:
            plot(rows, plot_file)
    return status
