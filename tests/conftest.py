"""Shared test configuration: hypothesis profiles for these shared, noisy machines, the
``openmp`` marker, and tests/ on sys.path so test files can ``from strategies import ...``."""

import os
import sys

import pytest
from hypothesis import HealthCheck, settings

# pytest's default (prepend) import mode already puts this folder first on sys.path;
# --import-mode=importlib does not, so say it here once.
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

# No deadlines: machines are shared and timing is noisy. CI replays a fixed set of
# examples (derandomize) so a red CI run is reproducible on a developer's machine.
settings.register_profile(
    "dev", deadline=None, max_examples=60,
    suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, max_examples=60, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow])
# HYPOTHESIS_PROFILE wins (.ci/run sets it to "ci"); otherwise CI=... means "ci".
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "dev"))

NO_OPENMP = "srigl_np was built without OpenMP: threads > 1 run serially, nothing to compare"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "openmp: runs kernels with threads > 1 or compares thread counts; "
                   "skipped when srigl_np.kernels.openmp_enabled() is False")


def pytest_runtest_setup(item):
    if item.get_closest_marker("openmp") is None:
        return
    # Imported here, so a broken build fails the tests that need it, not the collection.
    from srigl_np.kernels import openmp_enabled
    if not openmp_enabled():
        pytest.skip(NO_OPENMP)


@pytest.fixture(scope="session")
def srigl_run(tmp_path_factory):
    """A finished SRigL run directory (mlp, 90%, one epoch of the embedded subset, ΔT 10),
    trained once per session; tests read it and write elsewhere."""
    from srigl_np.train import main

    out = tmp_path_factory.mktemp("run") / "mlp-srigl"
    assert main(["--model", "mlp", "--method", "srigl", "--sparsity", "0.9", "--epochs", "1",
                 "--dataset", "embedded", "--delta", "10", "--progress", "off",
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def every_team_runs(request, monkeypatch):
    """Kernels called with threads=2 run two threads on the suite's small shapes: the
    grains that keep small calls on one thread (thread_policy) are lowered to 1, so
    the parallel code paths are the ones tested. test_thread_policy tests the grains
    themselves."""
    if request.module.__name__.endswith("test_thread_policy"):
        return
    from srigl_np import thread_policy
    monkeypatch.setattr(thread_policy, "GRAIN_WORK", 1)
    monkeypatch.setattr(thread_policy, "TRAINING_GRAIN_WORK", 1)


@pytest.fixture(params=("avx512", "avx2", "generic"))
def path(request):
    """Each CPU path of the kernels in turn (skipped where this build or CPU lacks it),
    then put back: the test matrix over the compiled variants."""
    from srigl_np._kernels import PATH_NAMES
    from srigl_np.kernels import cpu_paths, set_cpu_path

    assert request.param in PATH_NAMES
    if request.param not in cpu_paths():
        pytest.skip(f"CPU path {request.param} is not available here: {cpu_paths()}")
    previous = set_cpu_path(request.param)
    yield request.param
    set_cpu_path(previous)
