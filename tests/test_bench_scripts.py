"""The benchmarks are not run by the suite, but each must still start: its `--help` answers (imports resolve)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "bench").glob("*.py") if '__name__ == "__main__"' in p.read_text())

#: Runs every script's `--help` in one interpreter (each exits with SystemExit 0), printing the ones that fail.
PROBE = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            failed.append(f"{path}: exit {exc.code}")
    except BaseException as exc:
        failed.append(f"{path}: {exc!r}")
    else:
        failed.append(f"{path}: --help did not exit")
print("FAILED", failed, file=sys.stderr)
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_answers_help() -> None:
    assert len(SCRIPTS) >= 7
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
