"""The inference wing: a trained sparse model condensed for serving.

    condensed         condensed layers, ``values[n_active, k]`` + ``indices[n_active, k]``:
                      ``CondensedLinear``, ``CondensedConv2d`` and the ``Stage`` protocol
    condensed_model   ``CondensedModel`` (``logits``, ``predict``, ``to("cuda")``), its other
                      stages and its ``.npz`` file format (``save``, ``load``)
    condensing        ``condense(model, masks=...)`` and ``condense_run(run)``: a trained
                      ``Sequential`` into a ``CondensedModel``, structure from the masks

It imports the foundations, the network layers it condenses and the one ``.npz`` reader
(``formats.npz``); nothing of training (tests/test_imports.py pins it).
"""
