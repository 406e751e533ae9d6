"""The file formats wing: reading and writing the files srigl_np meets, every file untrusted.

    npz            the one .npz reader and its safety model (no pickles, every member's
                   .npy header checked against its zip entry, inflation bounded)
    checkpoint     the training checkpoint format and ``load_model`` (a run for inference)
    torch_format   PyTorch checkpoint files read without PyTorch (its restricted
                   unpickler, zip container and tensor finaliser in the torch_* modules)
    importing      PyTorch checkpoints mapped onto srigl_np models and masks
    sniff          which kind of model file a path is, from its zip member names

It imports the network pieces (``models``, ``layers``) and the foundations, never the
condensed inference side; importing the wing imports none of its modules.
"""
