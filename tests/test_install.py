"""What a user sees when Python imports a source tree whose extension was never built."""

import shutil
import subprocess
import sys
from pathlib import Path

import srigl_np


def test_unbuilt_source_tree_names_the_cause_and_the_fix(tmp_path):
    # A checkout as `pip install .` leaves it: sources only, the build went to site-packages.
    package = Path(srigl_np.__file__).parent
    shutil.copytree(package, tmp_path / "srigl_np",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    (tmp_path / "setup.py").write_text("")
    # -S: no site-packages, so an editable install of this checkout cannot answer first.
    result = subprocess.run([sys.executable, "-S", "-c", "import srigl_np.kernels"],
                            cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: srigl_np's compiled kernels")
    assert f"unbuilt source tree in {tmp_path}" in last and "`pip install -e .`" in last
