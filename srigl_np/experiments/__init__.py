"""``python -m srigl_np.experiments``: grids of training runs (see ``command`` for the
command line), from Python too: ``run_grid(grid("smoke"), "runs/smoke", "embedded",
executor=...)`` runs a grid on any ``concurrent.futures.Executor``.

    grid       the presets, each run's directory name, trainer command and config
    runs       one run's task (``execute``), wherever it executes: claim, resume, stop
    runner     ``run_grid``: submit, report progress, stop the grid when told
    executors  the command line's Dask and submitit (Slurm) executors
    report     the summary tables and the plot
    command    the command line
"""

from .command import PROG, REPORT_FILES, main, make_parser
from .grid import METHODS, PRESETS, grid, requested_config, run_name, train_command
from .report import ablation_markdown, ablation_rows, markdown, plot, summarise
from .runner import INTERRUPTED, Interrupted, run_grid
from .runs import Outcome, config_difference, execute, is_finished

__all__ = ["PROG", "REPORT_FILES", "main", "make_parser", "METHODS", "PRESETS", "grid",
           "requested_config", "run_name", "train_command", "ablation_markdown",
           "ablation_rows", "markdown", "plot", "summarise", "INTERRUPTED", "Interrupted",
           "run_grid", "Outcome", "config_difference", "execute", "is_finished"]
