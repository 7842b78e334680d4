"""``python -m advcoreset`` is the CLI (torchrun's ``-m advcoreset`` runs the same module)."""

from __future__ import annotations

import subprocess
import sys


def test_module_entry_runs_the_cli_and_keeps_its_exit_codes() -> None:
    ok = subprocess.run([sys.executable, "-m", "advcoreset", "config", "--set", "selection.method=craig"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "method: craig" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "advcoreset", "config", "--set", "selection.fraction=2"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "selection.fraction" in bad.stderr
