import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def pytester_like():
    """Run the harness's pytest in a subprocess (as a lab engineer would)."""
    def run(*args, timeout=120, env_extra=None):
        env = dict(os.environ, **(env_extra or {}))
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    return run
