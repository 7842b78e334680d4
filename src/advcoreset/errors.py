"""The command line's error policy: which failures are the user's input (exit 2), which are the run's
circumstances (exit 1), and which are bugs (exit 1 with a traceback), each told in one line.

Bad input: every ``ValueError`` the library raises on purpose (``ConfigError``, ``DataError``,
``CheckpointError``, ``RunFolderError``, a bench spec's errors) and files that do not exist. Runtime
failures: ``TrainingError`` (a diverging loss), the file system (disk full, permissions changed under a
run), memory, a missing optional package. Anything else is an internal error.
"""

from __future__ import annotations

import re

DEBUG_ENV = "ADVCORESET_DEBUG"
BAD_INPUT, RUNTIME = 2, 1

# torch's UnpicklingError advises retrying with weights_only=False, which would run the file's code.
_UNSAFE_ADVICE = re.compile(r"[^.;]*weights_only[^.;]*[.;]?", re.IGNORECASE)


def one_line(text: str) -> str:
    """``text`` on one line, without any advice to turn off ``weights_only``."""
    text = _UNSAFE_ADVICE.sub("", text)
    return " ".join(text.split())


def _with_notes(e: BaseException, text: str) -> str:
    notes = getattr(e, "__notes__", [])
    return "; ".join([text, *notes]) if notes else text


def exit_code_and_message(e: BaseException) -> tuple[int, str, bool]:
    """(exit code, one-line message, whether it is a bug whose traceback should be shown) for ``e``."""
    import torch
    import yaml

    name = type(e).__name__
    # by name: importing the trainer here could itself fail, and the trainer may move
    if any(c.__name__ == "TrainingError" and c.__module__.startswith("advcoreset") for c in type(e).__mro__):
        code, text, bug = RUNTIME, str(e), False
    elif isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        text = f"{e.filename}: {e.strerror}" if e.filename else str(e)
        code, bug = BAD_INPUT, False
    elif isinstance(e, (ValueError, yaml.YAMLError)):
        code, text, bug = BAD_INPUT, str(e), False
    elif isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        code, bug = RUNTIME, False
        text = "out of memory; lower optim.batch_size or eval.batch_size, or use a smaller data.train_subset"
    elif isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        code, text, bug = RUNTIME, f"{e.strerror or name}{where}; check the disk and permissions, then " \
                                   "rerun (a training run continues with --resume)", False
    elif isinstance(e, ImportError):
        code, text, bug = RUNTIME, str(e), False
    else:
        code, bug = RUNTIME, True
        text = (f"internal error ({name}: {e}); this is a bug in advcoreset, not in your input: please report "
                "it with the traceback above")
    return code, one_line(_with_notes(e, text)), bug
