"""``python -m srigl_np.bench``: the command line of bench.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
