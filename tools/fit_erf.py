"""Fit the rational erf of the compiled GELU (srigl_np/_kernels_isa.h, srigl_gelu_<isa>).

    erf(z) ~ z * P(z^2) / Q(z^2)   for |z| <= CLAMP, +-1 beyond,

with P of degree DEG_P and Q of degree DEG_Q in t = z^2, Q's constant term 1. The fit
is a linearised least squares on a dense grid of t (Sanathanan-Koerner: minimise
|P(t) - f(t) Q(t)| / |Q_prev(t)| with f = erf(z) / z, iterated so the weights approach
those of the true residual), then Lawson's iteration (weights multiplied by the
current |error|) to move towards the minimax error on z in [0, CLAMP]. CLAMP is where
float32 erf rounds to 1: erf(3.92) = 1 - 2.8e-8.

Run:  python tools/fit_erf.py     (prints the coefficients as C literals and the
                                   largest absolute error of erf, in float64 and when
                                   evaluated in float32 by Horner's rule as the kernel
                                   does; needs numpy and scipy)
"""

import numpy as np
from scipy.special import erf

CLAMP = 3.92
DEG_P, DEG_Q = 5, 5
GRID = 20000


def design(t, f, weight):
    """Rows [t^0..t^DEG_P, -f t^1..-f t^DEG_Q] * weight: the linearised residual."""
    p_cols = t[:, None] ** np.arange(DEG_P + 1)
    q_cols = -f[:, None] * t[:, None] ** np.arange(1, DEG_Q + 1)
    return np.hstack([p_cols, q_cols]) * weight[:, None]


def rational(coef, t):
    p = np.polyval(coef[:DEG_P + 1][::-1], t)
    q = 1 + t * np.polyval(coef[DEG_P + 1:][::-1], t)
    return p / q, q


def fit():
    z = np.linspace(0, CLAMP, GRID)
    t = z * z
    f = np.where(z > 0, erf(z) / np.where(z > 0, z, 1), 2 / np.sqrt(np.pi))
    # The absolute error of erf is z * (P/Q - f): weight the rows by z (plus a floor so
    # z = 0 still pins P(0)).
    base = z + 1e-3
    q_prev = np.ones_like(t)
    coef = None
    for _ in range(8):   # Sanathanan-Koerner
        coef = np.linalg.lstsq(design(t, f, base / np.abs(q_prev)), f * base / np.abs(q_prev),
                               rcond=None)[0]
        _, q_prev = rational(coef, t)
    lawson = np.ones_like(t)
    best, best_err = coef, np.inf
    for _ in range(60):  # Lawson towards the minimax error
        w = base * np.sqrt(lawson) / np.abs(q_prev)
        coef = np.linalg.lstsq(design(t, f, w), f * w, rcond=None)[0]
        value, q_prev = rational(coef, t)
        err = np.abs(z * value - erf(z))
        if err.max() < best_err:
            best, best_err = coef, err.max()
        lawson *= err / err.mean()
        lawson /= lawson.mean()
    return best


def erf32(coef, z):
    """The kernel's float32 evaluation (Horner in t = z*z, clamped)."""
    z = np.clip(z.astype(np.float32), np.float32(-CLAMP), np.float32(CLAMP))
    t = z * z
    c = coef.astype(np.float32)
    p = c[DEG_P]
    for a in c[DEG_P - 1::-1][:DEG_P]:
        p = p * t + a
    q = c[DEG_P + DEG_Q]
    for a in c[DEG_P + DEG_Q - 1:DEG_P:-1]:
        q = q * t + a
    q = q * t + np.float32(1)
    return z * p / q


def main():
    coef = fit()
    z = np.linspace(-6, 6, 2_000_001)
    value, _ = rational(coef, np.minimum(z * z, CLAMP ** 2))
    exact = erf(z)
    err64 = np.abs(np.clip(z, -CLAMP, CLAMP) * value - exact).max()
    err32 = np.abs(erf32(coef, z).astype(np.float64) - exact).max()
    print(f"P (t^0..t^{DEG_P}):", ", ".join(f"{c:.9e}f" for c in coef[:DEG_P + 1]))
    print(f"Q (t^1..t^{DEG_Q}):", ", ".join(f"{c:.9e}f" for c in coef[DEG_P + 1:]))
    print(f"max |erf error| on [-6, 6]: {err64:.3e} (float64 arithmetic), "
          f"{err32:.3e} (float32 Horner, as the kernel)")


if __name__ == "__main__":
    main()
