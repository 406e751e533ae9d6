"""srigl_np: Structured RigL (SRigL) dynamic sparse training in NumPy + Cython.

The package layout follows the data flow (the README's tour has one line per module):
    foundations   backend (devices), validation (argument checks), fileio (atomic
                  writes), kernels (each kernel defined once, with its Cython and
                  CUDA overrides: _kernels, cuda)
    training      data -> layers/models -> losses/optim -> dst (masks, updates) ->
                  sparsity (DynamicSparsity) + audit -> formats.checkpoint -> train
    formats       formats/: npz (the one .npz reader) -> checkpoint, scipy_npz;
                  torch_format (PyTorch files, no PyTorch) -> importing; sniff
    inference     condensed (condensed layers, the stage protocol) -> condensed_model
                  (CondensedModel, its file format) <- condensing (condense,
                  condense_run) -> bench
Importing the package imports none of these; CuPy is imported only when a GPU is used.
"""

__version__ = "0.1.0"


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP."""
    from .kernels import openmp_enabled as _enabled
    return _enabled()
