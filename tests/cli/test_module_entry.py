"""``python -m advcoreset`` is the CLI (torchrun's ``-m advcoreset`` runs the same module)."""

from __future__ import annotations

import subprocess
import sys


def test_module_entry_runs_the_cli_and_keeps_its_exit_code() -> None:
    # A config error: main() must have run (its message) and its return value must be the exit status.
    bad = subprocess.run([sys.executable, "-m", "advcoreset", "config", "--set", "selection.fraction=2"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "selection.fraction" in bad.stderr
