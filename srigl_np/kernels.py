"""Import point for the compiled kernels, with a helpful error when they are missing."""

try:
    from ._kernels import (  # noqa: F401
        CondensedWeights,
        condensed_matmul,
        condensed_matvec,
        column_block_width,
        tile_vectors,
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
