"""The inference wing: a trained sparse model condensed for serving.

    condensed         condensed layers, ``values[n_active, k]`` + ``indices[n_active, k]``:
                      ``CondensedLinear``, ``CondensedConv2d`` and the ``Stage`` protocol;
                      their ``forward`` is the one place that calls the kernels
    stages            the stages between them: dense layers, activations, normalisation,
                      pooling, ViT's tokens, ``Scatter``
    graph             stages that hold pipelines: ``Residual``, ``SqueezeExcite``,
                      ``Attention``; ``run_pipeline``
    condensed_model   ``CondensedModel`` (``logits``/``predict`` with ``input_scale``,
                      ``to("cuda")``, ``save``, ``load``) and the registry of stage kinds
    model_file        its ``.npz`` file format (version 2; version 1 files still load)
    condense_layer    one weight condensed (padded or dense when not constant fan-in)
    condensing        ``condense(model, masks=...)`` and ``condense_run(run)``: a trained
                      model, nested blocks included, into a ``CondensedModel``

It imports the foundations, the network layers it condenses and the one ``.npz`` reader
(``formats.npz``); nothing of training (tests/test_imports.py pins it).
"""
