"""The file formats wing: every file srigl_np reads is untrusted, and read here.

    npz            the one .npz reader (``NpzReader``, ``read_npz``) and its safety
                   model: no pickles, each member's .npy header checked against its zip
                   entry, the total within ``fileio.max_bytes()``, inflation bounded,
                   before anything is read
    checkpoint     the training checkpoint format, and ``load_model`` (a run for inference)
    scipy_npz      scipy.sparse ``save_npz`` files, read through ``NpzReader`` and checked
                   in NumPy before any scipy routine sees them
    torch_format   PyTorch checkpoint files read without PyTorch; its parts: torch_archive
                   (the container), torch_pickle (the restricted unpickler), torch_records
                   (what the pickle builds), torch_tensors (the tensor finaliser)
    importing      PyTorch checkpoints read: model state, masks (pruner, saved masks,
                   prune pairs or zeros) and metadata (``ImportedCheckpoint``)
    layouts        the paper's architectures as PyTorch writes their state_dicts: every
                   key and shape at given sizes
    recognition    which architecture a state is, at what sizes, from keys and shapes
                   alone; key variants (ViT's old MLP names) renamed to ours
    model_map      an imported state mapped onto srigl_np's models (``to_model``)
    sniff          which kind of model a path holds, from its zip member names

The wing imports the network pieces (``models``, ``layers``) and the foundations, never
the condensed inference (``condensed_model`` reads its files through ``npz``;
tests/test_imports.py pins it). Importing the wing imports none of its modules.
"""
