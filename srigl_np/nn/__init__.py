"""The network wing: what a model is made of and how it learns, dense or masked.

    layers          Linear, Conv2d (grouped and depthwise with ``groups``), ReLU,
                    Flatten, Dropout and Sequential: ``forward(x, training)`` and
                    ``backward(grad_out)`` side by side; ``kaiming_normal`` (per-row
                    fan-in for sparse layers)
    normalization   BatchNorm1d, BatchNorm2d, LayerNorm
    pooling         MaxPool2d (with padding), GlobalAvgPool2d
    activations     Sigmoid, Hardsigmoid, Hardswish, GELU (exact erf form)
    blocks          Residual (body + shortcut, dotted sub-layer names), SqueezeExcite
    attention       MultiheadSelfAttention (ViT; torch's parameter names)
    losses          softmax cross-entropy
    optim           SGD (momentum, Nesterov), AdamW, learning-rate schedules
    models          ``build("mlp")``, ``build("cnn")`` for 1x28x28 input
    resnets         the paper's CIFAR ResNet-18, WRN-22-2 and torchvision's ResNet-50
    mobilenet       torchvision's MobileNet-V3 Large and Small
    vit             torchvision's ViT-B/16 (VisionTransformer)
    architectures   ``build_architecture(name)``: the paper's models by name, with the
                    PyTorch models' state_dict keys as parameter names

It imports only the foundations (backend, validation, kernels): nothing of the algorithm,
the file formats or inference (tests/test_imports.py pins it). Sparsity is applied from
outside, by ``dst.sparsity.DynamicSparsity`` masking the parameters in place.
"""
