"""``python -m srigl_np.bench``: the command line of bench.command."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
