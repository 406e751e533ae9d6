"""Writes tests/data/condensed_cnn_v1.npz (a small cnn condensed by the format_version 1
writer, at commit e753a16) and tests/data/condensed_cnn_v1_expected.npz (a float batch,
a uint8 batch and the logits that code gave for each). Run it from the repository root
at that commit only: the fixture pins what files of format_version 1 hold."""
import numpy as np
from srigl_np.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from srigl_np.nn.normalization import BatchNorm2d
from srigl_np.nn.pooling import MaxPool2d
from srigl_np.inference.condensing import condense

rng = np.random.default_rng(2026)
model = Sequential(Conv2d(1, 6, 3, rng=rng), BatchNorm2d(6), ReLU(),
                   Conv2d(6, 8, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                   Linear(8 * 4 * 4, 16, rng=rng), ReLU(), Linear(16, 5, rng=rng))
layers = [l for l in model.layers if isinstance(l, (Linear, Conv2d))]
for i, layer in enumerate(layers):
    w = layer.params["weight"]
    n_out, fan = w.shape[0], int(np.prod(w.shape[1:]))
    k = max(1, fan // 10)
    flat = np.zeros((n_out, fan), dtype=np.float32)
    for r in range(n_out):
        if i < len(layers) - 1 and r % 3 == 0:
            continue        # ablated
        cols = rng.choice(fan, k, replace=False)
        flat[r, cols] = rng.standard_normal(k)
    w[...] = flat.reshape(w.shape)
    layer.params["bias"][...] = 0.3 * rng.standard_normal(n_out)
bn = model.layers[1]
bn.buffers["running_mean"][...] = rng.standard_normal(6)
bn.buffers["running_var"][...] = rng.uniform(0.5, 2, 6)
bn.params["weight"][...] = rng.uniform(0.5, 1.5, 6)
bn.params["bias"][...] = rng.standard_normal(6) + 1.0
stats = (0.28, 0.35)
condensed = condense(model, input_stats=stats)
print(condensed, [s.kind for s in condensed.stages])
condensed.save("tests/data/condensed_cnn_v1.npz")
raw = rng.integers(0, 256, (4, 1, 10, 10), dtype=np.uint8)
x = rng.standard_normal((4, 1, 10, 10)).astype(np.float32)
np.savez("tests/data/condensed_cnn_v1_expected.npz", raw=raw, x=x,
         raw_logits=condensed.logits(raw), x_logits=condensed.logits(x))
