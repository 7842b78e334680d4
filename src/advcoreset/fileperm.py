"""File permissions of what advcoreset writes: what the user's umask gives a newly created file."""

from __future__ import annotations

import os
from pathlib import Path


def default_file_mode() -> int:
    """0o666 minus the process's umask (reading the umask means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def as_created(path: str | Path) -> None:
    """Give ``path`` the mode an ordinary new file gets (writers such as ``tempfile.mkstemp`` and safetensors
    create files 0600, which another user or a serving container cannot read)."""
    os.chmod(path, default_file_mode())
