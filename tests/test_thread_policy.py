"""The thread policy's pure rules: cgroup quotas from fake files, the default count, the
grain, the BLAS pool, and the wait policy a process gets on import."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from srigl_np import thread_policy, thread_waits
from srigl_np.thread_policy import (BLAS_GRAIN_WORK, GRAIN_WORK, blas_grain, blas_threads,
                                    cgroup_cpu_limit, default_thread_count,
                                    environment_threads, parse_cfs_quota, parse_cpu_max,
                                    resolve_threads, team_size)


@pytest.mark.parametrize("text, cpus", [
    ("max 100000\n", None), ("150000 100000\n", 1.5), ("50000 100000", 0.5),
    ("200000", 2.0), ("", None), ("abc 100000", None), ("0 100000", None),
    ("100000 0", None),
])
def test_cpu_max_lines(text, cpus):
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize("quota, period, cpus", [
    ("-1\n", "100000\n", None), ("50000\n", "100000\n", 0.5), ("300000", "100000", 3.0),
    ("x", "100000", None), ("50000", "0", None),
])
def test_cfs_quota_files(quota, period, cpus):
    assert parse_cfs_quota(quota, period) == cpus


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_takes_the_smallest_quota_of_the_cgroup_and_its_ancestors(tmp_path):
    self_cgroup = write(tmp_path / "self", "0::/user.slice/app.scope\n")
    write(tmp_path / "fs/cpu.max", "max 100000\n")
    write(tmp_path / "fs/user.slice/cpu.max", "150000 100000\n")
    write(tmp_path / "fs/user.slice/app.scope/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) == 1.5
    write(tmp_path / "fs/user.slice/app.scope/cpu.max", "50000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) == 0.5


def test_cgroup_v2_inside_a_container_reads_its_namespace_root(tmp_path):
    # The host path named in /proc/self/cgroup does not exist in the container's mount.
    self_cgroup = write(tmp_path / "self", "0::/../../kubepods/pod1/abc\n")
    write(tmp_path / "fs/cpu.max", "200000 100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) == 2.0


def test_cgroup_v1_cfs_quota(tmp_path):
    self_cgroup = write(tmp_path / "self", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "250000\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) == 2.5
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) is None


def test_no_cgroup_files_mean_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "missing") is None
    self_cgroup = write(tmp_path / "self", "0::/\n")
    assert cgroup_cpu_limit(tmp_path / "fs", self_cgroup) is None


def test_this_machines_limit_is_a_positive_number_or_none():
    limit = cgroup_cpu_limit()
    assert limit is None or limit > 0


@pytest.mark.parametrize("cpus, quota, threads", [
    (4, None, 4), (4, 1.5, 2), (4, 0.2, 1), (2, 8.0, 2), (8, 3.0, 3), (1, None, 1),
])
def test_default_count_follows_affinity_and_quota(cpus, quota, threads):
    assert default_thread_count(cpus, quota) == threads


def test_the_process_default_is_within_the_usable_cpus():
    from srigl_np.validation import max_thread_count, usable_cpus

    assert 1 <= thread_policy.DEFAULT_THREADS
    if environment_threads() is None:
        assert thread_policy.DEFAULT_THREADS <= usable_cpus()
    assert thread_policy.DEFAULT_THREADS <= max_thread_count()


@pytest.mark.parametrize("value, threads", [
    ("4", 4), ("4,2", 4), (" 3 ", 3), ("", None), ("x", None), ("0", None), ("-2", None),
])
def test_openmp_num_threads_from_the_environment(value, threads):
    assert environment_threads({"OMP_NUM_THREADS": value}) == threads
    assert environment_threads({}) is None


def test_an_explicit_count_is_kept_and_zero_means_the_default():
    assert resolve_threads(1, 8, default=2) == 1
    assert resolve_threads(2, 1, default=1) == 2    # the user's count, whatever the default
    assert resolve_threads(0, 8, default=2) == 2
    assert resolve_threads(0, 1, default=2) == 1    # threadpoolctl lowered OpenMP's
    assert resolve_threads(0, 0, default=2) == 1
    with pytest.raises(TypeError, match="threads must be an integer"):
        resolve_threads(1.5, 2)
    with pytest.raises(ValueError, match="threads must be in"):
        resolve_threads(-1, 2)


@pytest.mark.parametrize("threads, work, team", [
    (2, 0, 1), (2, GRAIN_WORK - 1, 1), (2, 2 * GRAIN_WORK - 1, 1), (2, 2 * GRAIN_WORK, 2),
    (2, 100 * GRAIN_WORK, 2), (4, 3 * GRAIN_WORK, 3), (1, 10**12, 1),
])
def test_every_thread_gets_a_grain_of_work(threads, work, team):
    assert team_size(threads, work) == team
    assert team_size(threads, work * 10, grain=GRAIN_WORK * 10) == team


def test_the_grain_is_read_at_each_call(monkeypatch):
    monkeypatch.setattr(thread_policy, "GRAIN_WORK", 1)
    assert team_size(2, 2) == 2
    assert team_size(2, 5, grain=0) == 2    # a zero grain never divides by zero


def test_blas_threads_follow_the_same_default_unless_the_user_sized_the_pool():
    assert blas_threads(3, {}) == 3
    assert blas_threads(0, {}) == thread_policy.DEFAULT_THREADS
    assert blas_threads(0, {"OPENBLAS_NUM_THREADS": "4"}) is None
    assert blas_threads(0, {"OMP_NUM_THREADS": "1"}) is None


def test_blas_grain_lowers_the_pool_for_small_products_and_puts_it_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pools = thread_policy._blas_pools()
    if not pools:
        pytest.skip("no BLAS library found by threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = [pool.get_num_threads() for pool in pools]
        if max(before) < 2:
            pytest.skip("the BLAS pool cannot run 2 threads here")
        with blas_grain(BLAS_GRAIN_WORK):           # less than a grain per thread
            assert [pool.get_num_threads() for pool in pools] == [1] * len(pools)
        assert [pool.get_num_threads() for pool in pools] == before
        with blas_grain(2 * BLAS_GRAIN_WORK):       # a grain each: left alone
            assert [pool.get_num_threads() for pool in pools] == before
        with pytest.raises(RuntimeError), blas_grain(0):
            raise RuntimeError("a failing product")
        assert [pool.get_num_threads() for pool in pools] == before


def test_library_wait_defaults_keep_the_users_values():
    env = {}
    thread_waits.set_library_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    thread_waits.set_library_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("user, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_package_sets_the_wait_policy_before_libgomp_loads(user, expected):
    probe = ("import os, srigl_np\n"
             "loaded = any('libgomp' in line for line in open('/proc/self/maps'))\n"
             "import srigl_np.kernels\n"
             "print(os.environ['OMP_WAIT_POLICY'], loaded)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc/self/maps to see which libraries are loaded")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert result.stdout.split() == [expected, "False"], result.stderr
