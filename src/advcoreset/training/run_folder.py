"""A run folder's life: checked writable before any work, one writer at a time, results written atomically,
a finished run recognised, and a failed final evaluation left resumable.

The folder holds ``config.yaml``, ``metrics.jsonl``, ``last.pt`` (and ``best.pt``), ``results.json`` and the
lock file ``.lock``. The lock is an advisory ``flock`` on that file: the kernel releases it when the
holder dies (even by SIGKILL), so a killed run never leaves a stale lock behind, while a second live
writer (a rerun started before an orphaned one ended) is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advcoreset.fileperm import default_file_mode

LOCK = ".lock"
RESULTS = "results.json"
CHECKPOINT = "last.pt"
PARENT_ENV = "ADVCORESET_PARENT_PID"
"""Set by ``advcoreset bench`` for its training children: the pid they must not outlive."""


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (not writable, in use, no run to resume, a run already there)."""


def check_writable(folder: str | Path, what: str = "run folder", hint: str = "choose a folder you can write to",
                   ) -> Path:
    """Create ``folder`` (and parents) if needed and prove a file can be written in it.

    Raises:
        RunFolderError: naming the folder, when it cannot be created or written (read-only, a file in the
            way, no permission).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{what} {folder} is a file, not a folder; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunFolderError(f"{what} {folder} is not writable ({e.strerror or e}); {hint}") from None
    return folder


RUN_FILES = ("config.yaml", "last.pt", "best.pt", "results.json", "metrics.jsonl", "model.safetensors",
             "model.json", "model_arch.py", "probe.json")
"""Files a training run owns: an evaluation never writes over them."""


def check_output_file(path: str | Path, what: str = "output file",
                      hint: str = "write the result elsewhere with --output FILE", *,
                      run: str | Path | None = None, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Prove that ``path`` can be written (its folder writable, the path not a folder), before any work.
    Nothing is left behind: the folder is only created if it had to be, and the probe file is removed.
    ``run``: the run folder the command reads, none of whose own files (``RUN_FILES``) may be the output;
    ``inputs``: files the command reads, which may not be the output either."""
    path = Path(path)
    target = path.resolve()
    for inp in inputs:
        if Path(inp).resolve() == target:
            raise RunFolderError(f"{what} {path} is also an input of this command ({inp}): writing it would "
                                 f"destroy it; {hint}")
    if run is not None and target.parent == Path(run).resolve() and target.name in RUN_FILES:
        raise RunFolderError(f"{what} {path} is the run's own {target.name}: writing it would destroy it; {hint} "
                             f"(e.g. {Path(run) / 'eval.json'})")
    if path.is_dir():
        raise RunFolderError(f"{what} {path} is a folder; give a file name (e.g. {path / 'eval.json'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunFolderError(f"{what} {path} exists and is not writable; {hint}")
    check_writable(path.parent, f"folder of the {what}", hint)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` via a temporary file and a rename: a crash mid-write leaves the old
    file (or none), never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively for the duration; a second holder gets ``RunFolderError`` at once.

    The lock file keeps the holder's pid (for the message); the lock itself lives in the kernel and ends
    with the process, so the file left behind by a killed run is not a stale lock."""
    folder = check_writable(folder)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no second-writer protection there
        yield
        return
    path = folder / LOCK
    f = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunFolderError(f"run folder {folder} is in use by {holder}; wait for it to end (or stop it) "
                                 "before writing to this folder again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()


def lock_holder(folder: str | Path) -> int | None:
    """The pid holding ``folder``'s lock, or None when no live process holds it."""
    path = Path(folder) / LOCK
    if not path.exists():
        return None
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            text = f.read().split()
            return int(text[1]) if len(text) == 2 and text[1].isdigit() else -1
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def finished_results(folder: str | Path, epochs: int | None = None) -> dict[str, Any] | None:
    """The final results of a finished run in ``folder`` (its results.json beside its checkpoint), or None
    when the run is not finished (no results.json, or one that does not parse).

    ``epochs``: the length the caller's config asks for (``optim.epochs``), when it would resume the run. A
    finished run trained to another length raises ``RunFolderError``: resuming it trains nothing, and its
    results would stand for a run that was not trained."""
    folder = Path(folder)
    path = folder / RESULTS
    if not (path.is_file() and (folder / CHECKPOINT).is_file()):
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(res, dict) and res.get("kind") == "final"):
        return None
    done = res.get("epoch")
    if epochs is not None and isinstance(done, int) and not isinstance(done, bool) and done != epochs:
        raise RunFolderError(f"--resume: {folder} holds a finished run ({path}) of {done} epoch(s) and the config "
                             f"now asks for optim.epochs={epochs}; a finished run is not trained further: start a "
                             f"new --out for {epochs} epochs (nothing was changed)")
    return res


def check_start(folder: str | Path, resume: bool) -> None:
    """Before any work: refuse to start a new run over an existing one, or to resume where there is none."""
    folder = Path(folder)
    ckpt = folder / CHECKPOINT
    if resume and not ckpt.exists():
        raise RunFolderError(f"--resume: there is no checkpoint {ckpt} to resume from; drop --resume to start "
                             "a new run there")
    if not resume and ckpt.exists():
        raise RunFolderError(f"{folder} already holds a run ({ckpt}); pass --resume to continue it or choose "
                             "another out_dir (nothing was overwritten)")


@contextmanager
def final_evaluation(folder: str | Path, epoch: int) -> Iterator[None]:
    """Wrap the final evaluation: whatever fails inside it is told that the trained model is safe and that
    ``--resume`` reruns only the evaluation (a note on the exception, so a bug's traceback keeps it too)."""
    try:
        yield
    except Exception as e:
        note = (f"final evaluation failed after training: the trained model is safe in {Path(folder) / CHECKPOINT} "
                f"(epoch {epoch}); `advcoreset train --out {folder} --resume` reruns only the final evaluation")
        if hasattr(e, "add_note"):
            e.add_note(note)
        else:  # Python 3.10: what add_note does
            e.__notes__ = [*getattr(e, "__notes__", []), note]  # type: ignore[attr-defined]
        raise


def die_with_parent() -> None:
    """In a bench child (``ADVCORESET_PARENT_PID`` set): end this process when that parent ends, so a killed
    bench leaves no training run behind that keeps writing into its folder.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Elsewhere a daemon thread
    polls the parent pid once a second."""
    want = os.environ.get(PARENT_ENV)
    if not want or not want.isdigit():
        return
    parent = int(want)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        return

    def _watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=_watch, daemon=True, name="advcoreset-parent-watch").start()
