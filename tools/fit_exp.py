"""Fit the polynomial exp of the compiled softmax (srigl_np/_kernels_isa.h,
srigl_softmax_<isa>).

    exp(x) = 2^n * exp(r),  n = round(x / ln 2),  r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2],
    exp(r) ~ c0 + c1 r + ... + cDEG r^DEG,

the coefficients a least-squares fit of the relative error on a dense grid of r, then
Lawson's iteration (weights multiplied by the current |error|) towards the minimax
relative error. ln 2 is split in two floats (LN2_HI exact in few bits, LN2_LO the rest)
so that r = (x - n LN2_HI) - n LN2_LO loses nothing for |n| <= 126.

Run:  python tools/fit_exp.py     (prints the coefficients as C literals, the split of
                                   ln 2, and the largest relative error of exp on
                                   [-87, 0] in float64 and evaluated in float32 as the
                                   kernel does; needs numpy)
"""

import math

import numpy as np

DEG = 6
GRID = 20000
HALF = math.log(2) / 2
LN2_HI = float(np.float32(0.693145751953125))      # 0x3f317200: 16 significant bits
LN2_LO = float(np.float32(math.log(2) - LN2_HI))


def fit():
    r = np.linspace(-HALF * 1.001, HALF * 1.001, GRID)
    target = np.exp(r)
    powers = r[:, None] ** np.arange(DEG + 1)
    lawson = np.ones_like(r)
    best, best_err = None, np.inf
    for _ in range(80):
        w = np.sqrt(lawson) / target
        coef = np.linalg.lstsq(powers * w[:, None], target * w, rcond=None)[0]
        err = np.abs(powers @ coef / target - 1)
        if err.max() < best_err:
            best, best_err = coef, err.max()
        lawson *= err / err.mean()
        lawson /= lawson.mean()
    return best


def exp32(coef, x):
    """The kernel's float32 evaluation for x <= 0 (clamped at -87)."""
    x = np.maximum(x.astype(np.float32), np.float32(-87))
    n = np.rint(x * np.float32(1 / math.log(2))).astype(np.float32)
    r = (x - n * np.float32(LN2_HI)) - n * np.float32(LN2_LO)
    c = coef.astype(np.float32)
    p = c[DEG]
    for a in c[DEG - 1::-1]:
        p = p * r + a
    return p * np.ldexp(np.float32(1), n.astype(np.int32)).astype(np.float32)


def main():
    coef = fit()
    x = np.linspace(-87, 0, 2_000_001).astype(np.float32)
    exact = np.exp(x.astype(np.float64))          # of the float32 inputs themselves
    r = np.linspace(-HALF, HALF, 200001)
    err64 = np.abs(np.polyval(coef[::-1], r) / np.exp(r) - 1).max()
    err32 = np.abs(exp32(coef, x) / exact - 1).max()
    print("c0..c%d:" % DEG, ", ".join(f"{c:.9e}f" for c in coef))
    print(f"LN2_HI {LN2_HI!r}f, LN2_LO {LN2_LO:.9e}f")
    print(f"max relative error: {err64:.3e} (float64 on [-ln2/2, ln2/2]), "
          f"{err32:.3e} (float32 on [-87, 0], as the kernel)")


if __name__ == "__main__":
    main()
