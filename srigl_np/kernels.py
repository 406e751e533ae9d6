"""Import point for the compiled kernels, with a helpful error when they are missing."""

import os

# OpenMP threads that spin after a kernel steal the cores BLAS needs next (both libraries
# run back to back in every layer), so let them sleep unless the user chose otherwise.
# libgomp reads this once, when ``_kernels`` first loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    from ._kernels import (  # noqa: F401
        col2im,
        conv_output_size,
        im2col,
        max_threads,
        openmp_enabled,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "srigl_np's compiled kernels (srigl_np._kernels) are not built. Install the "
        "package with `pip install .` or `pip install -e .` from the source tree "
        "(needs a C compiler, Cython >= 3 and numpy >= 2)."
    ) from exc
