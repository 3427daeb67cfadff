"""Running ``scripts/test.py`` in a subprocess, optionally with a simulated ``kill -9`` (shared by the tests)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "test.py"


def run_test_script(args: Sequence[str], crash_after: int | None = None, timeout: float = 600,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python scripts/test.py *args`` from the repository root; with ``crash_after=K`` the evaluating process
    exits with 137 right after writing its K-th record (``PROXYCLIP_CRASH_AFTER``, see ``BenchmarkScore``).
    ``env``: variables added to this process's environment."""
    env = {**os.environ, **(env or {})}
    env.pop("PROXYCLIP_CRASH_AFTER", None)
    if crash_after is not None:
        env["PROXYCLIP_CRASH_AFTER"] = str(crash_after)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)
