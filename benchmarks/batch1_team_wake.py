"""What a second thread costs a batch-1 call: the bench layers' condensed forward on 1
thread against 2 threads forced past the grain, back to back and after a 2 ms gap.

    PYTHONPATH=. python benchmarks/batch1_team_wake.py

float32, 90% constant fan-in, default CPU path; ms per call, the median of 7 rounds (2000
back-to-back calls, or 200 calls each after a 2 ms sleep, a round). With the package's
OMP_WAIT_POLICY=PASSIVE the workers sleep between calls, so a 2-thread call pays their
wake-up: the figure behind thread_policy.GRAIN_WORK (2**20 multiply-adds a thread).
The machine's load flag is printed last; read the figures only when it says quiet.
"""

import time

import numpy as np

from srigl_np import thread_policy
from srigl_np.bench import LoadMeter, load_flags
from srigl_np.bench.machine import machine_info
from srigl_np.bench.runner import constant_fan_in_weight
from srigl_np.inference.condensed import CondensedLinear

SHAPES = ((768, 3072), (3072, 768), (4096, 4096))


def median_ms(call, calls=2000, gap=0.0, rounds=7):
    call()
    per_round = []
    for _ in range(rounds):
        if gap:
            total = 0.0
            for _ in range(200):
                time.sleep(gap)
                start = time.perf_counter()
                call()
                total += time.perf_counter() - start
            per_round.append(total / 200 * 1e3)
        else:
            start = time.perf_counter()
            for _ in range(calls):
                call()
            per_round.append((time.perf_counter() - start) / calls * 1e3)
    return sorted(per_round)[rounds // 2]


def main():
    rng = np.random.default_rng(0)
    print(machine_info())
    with LoadMeter() as meter:
        for n_in, n_out in SHAPES:
            layer = CondensedLinear.from_dense(constant_fan_in_weight(n_in, n_out, 0.9, 0.0,
                                                                      rng))
            x = rng.standard_normal((1, n_in)).astype(np.float32)
            grain = thread_policy.GRAIN_WORK
            try:
                times = []
                for forced in (2**62, 1):   # one thread; then two whatever the work
                    thread_policy.GRAIN_WORK = forced
                    times += [median_ms(lambda: layer.forward(x)),
                              median_ms(lambda: layer.forward(x), gap=0.002)]
            finally:
                thread_policy.GRAIN_WORK = grain
            print(f"{n_in}->{n_out}: 1 thread {times[0]:.4f} ms (after a gap {times[1]:.4f}); "
                  f"2 threads {times[2]:.4f} ms (after a gap {times[3]:.4f})", flush=True)
    print("; ".join(load_flags(meter.other_cpus, meter.resolution)) or "quiet")


if __name__ == "__main__":
    main()
