"""srigl_np: Structured RigL (SRigL) dynamic sparse training in NumPy + Cython.

The package layout follows the data flow:
    data -> layers/models -> losses/optim -> dst (masks, updates) -> sparsity
    (DynamicSparsity) -> train -> condensed (inference) -> bench.
"""

__version__ = "0.1.0"


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP."""
    from .kernels import openmp_enabled as _enabled
    return _enabled()
