"""Other load on the machine while a row runs, and the row's warnings.

Linux counts every CPU's busy time in /proc/stat; the CPU time that other processes used
is the busy time of this process's CPUs less this process's own CPU time
(``LoadMeter``). A row is "busy" when that exceeds BUSY_CPUS, "unstable" when an
implementation's timings spread more than UNSTABLE_SPREAD (``load_flags``).
"""

import os
import time

# A row is "busy" when other load used more than this many CPUs on average (beyond the
# resolution of /proc/stat's tick counts), "unstable" when an implementation's
# interquartile range exceeds this fraction of its median.
BUSY_CPUS = 0.25
UNSTABLE_SPREAD = 0.30

# /proc/stat's per-CPU fields: user nice system idle iowait irq softirq steal (guest time
# is already inside user). Busy = all but idle and iowait; steal (a hypervisor running
# someone else on our CPU) is load from elsewhere too.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def read_cpu_busy(path="/proc/stat", cpus=None):
    """Busy clock ticks of ``cpus`` (CPU numbers; None: all, the aggregate line) since
    boot, from /proc/stat, or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total, per_cpu = None, {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu"):
            continue
        try:
            busy = sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
        except ValueError:
            continue
        if name == "cpu":
            total = busy
        elif name[3:].isdigit():
            per_cpu[int(name[3:])] = busy
    if cpus is not None and per_cpu and all(c in per_cpu for c in cpus):
        return sum(per_cpu[c] for c in cpus)
    return total


def own_cpu_seconds():
    """CPU seconds this process (all its threads) has used: user + system."""
    try:
        import resource
    except ImportError:   # not Unix
        t = os.times()
        return t.user + t.system
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_cpus(busy_start, busy_end, own_start, own_end, wall, ticks_per_second):
    """The average number of CPUs other load kept busy over ``wall`` seconds: the CPUs'
    busy time (ticks / ticks_per_second) less this process's own CPU seconds; None when
    a /proc/stat reading is missing or no time passed."""
    if busy_start is None or busy_end is None or not wall > 0:
        return None
    machine = (busy_end - busy_start) / ticks_per_second
    return max(0.0, (machine - (own_end - own_start)) / wall)


def _our_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _ticks_per_second():
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        return 100


class LoadMeter:
    """Context manager: how many CPUs other load used while its block ran.

    After the block: ``other_cpus`` (None where /proc/stat cannot be read), ``wall``
    (seconds) and ``resolution``, the most that ``other_cpus`` can be off by because
    /proc/stat counts whole ticks (one per CPU at each end). Readers are injectable for
    tests: ``read_busy()`` -> busy ticks or None, ``own_cpu()`` -> CPU seconds,
    ``clock()`` -> seconds."""

    def __init__(self, read_busy=None, own_cpu=own_cpu_seconds, clock=time.perf_counter,
                 ticks_per_second=None, n_cpus=None):
        cpus = _our_cpus()
        self._read_busy = read_busy or (lambda: read_cpu_busy(cpus=cpus))
        self._own_cpu, self._clock = own_cpu, clock
        self._ticks = ticks_per_second or _ticks_per_second()
        self._n_cpus = n_cpus or (len(cpus) if cpus else os.cpu_count() or 1)
        self.other_cpus = self.wall = self.resolution = None

    def __enter__(self):
        self._start = (self._read_busy(), self._own_cpu(), self._clock())
        return self

    def __exit__(self, *exc):
        busy, own, now = self._read_busy(), self._own_cpu(), self._clock()
        busy0, own0, start = self._start
        self.wall = now - start
        self.other_cpus = other_cpus(busy0, busy, own0, own, self.wall, self._ticks)
        self.resolution = (2 * self._n_cpus / self._ticks / self.wall
                           if self.wall > 0 else float("inf"))
        return False


def load_flags(other, resolution, worst_spread=None, worst_name=None):
    """The row's warnings: "busy: ..." when other load used more than BUSY_CPUS CPUs
    beyond the reading's resolution, "unstable: ..." when the worst implementation's
    spread exceeds UNSTABLE_SPREAD. An empty list: nothing noticed."""
    flags = []
    if other is not None and other - (resolution or 0.0) > BUSY_CPUS:
        flags.append(f"busy: other load used {other:.1f} CPUs")
    if worst_spread is not None and worst_spread > UNSTABLE_SPREAD:
        flags.append(f"unstable: {worst_name} IQR {worst_spread:.0%} of its median")
    return flags


def row_flags(meter, records=(), expected_other=0.0):
    """``load_flags`` for a row timed inside ``meter`` (a LoadMeter after its block):
    ``records`` are the row's ``time_all`` records (the worst spread decides
    "unstable"; none: load only), ``expected_other`` CPUs of load the script started
    on purpose (a busy neighbour) are taken off before "busy" is judged."""
    other = meter.other_cpus
    if other is not None:
        other = max(0.0, other - expected_other)
    spreads = [r for r in records if r.get("iqr_over_median") is not None]
    worst = max(spreads, key=lambda r: r["iqr_over_median"]) if spreads else {}
    return load_flags(other, meter.resolution, worst.get("iqr_over_median"),
                      worst.get("implementation"))


def flagged(text, flags):
    """``text`` (a figure, a ratio) with the kinds of its row's flags after it, "1.25x
    (busy; unstable)", so that no figure measured under load reads as a fact."""
    kinds = [flag.split(":")[0] for flag in flags]
    return f"{text} ({'; '.join(kinds)})" if kinds else text
