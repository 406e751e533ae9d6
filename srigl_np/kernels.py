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
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only on a broken install
    if exc.name != __package__ + "._kernels":
        raise  # the extension is there but something it needs (numpy) is not
    import os

    _tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _hint = ""
    if os.path.exists(os.path.join(_tree, "setup.py")):
        # `pip install .` builds into site-packages, but Python imports the package from
        # the current directory first, so running from the checkout finds no extension.
        _hint = (f" This is the unbuilt source tree in {_tree}: build it in place with "
                 "`pip install -e .`, or run from another directory to use a copy "
                 "installed with `pip install .`.")
    raise ImportError(
        "srigl_np's compiled kernels (srigl_np._kernels) are not built. Install the "
        "package with `pip install .` or `pip install -e .` from the source tree "
        "(needs a C compiler, Cython >= 3 and numpy >= 2)." + _hint
    ) from exc
