"""``python -m srigl_np.experiments``: the command line of experiments.command."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
