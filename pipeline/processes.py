"""Child processes that die with their parent: DataLoader workers, pool workers and launched commands.

A stage killed with SIGKILL runs no cleanup code, so its children must not depend on it: on Linux each child asks
the kernel (``prctl(PR_SET_PDEATHSIG)``) for a signal when its parent dies, then checks that the parent it was
started for is still its parent (closing the race of a parent that died before the call). Elsewhere these helpers
do nothing.

- :func:`die_with_parent`: the call itself, for any child (a ``multiprocessing`` pool's ``initializer``);
- :func:`loader_worker_init`: a DataLoader ``worker_init_fn`` that makes each worker die with the process that
  created the loader;
- :func:`pid_alive`: whether a process of this host is still running (a zombie is not): how the next start
  recognises what a killed process left (temporaries, MLflow runs);
- :func:`run_child`: run a command (``torchrun``) that dies with this process, and that is stopped with SIGTERM
  (its own cleanup) rather than SIGKILL when this process is interrupted or terminated;
- ``python -m pipeline.processes PARENT_PID MODULE ARGS...``: run ``python -m MODULE ARGS...`` in this interpreter
  after :func:`die_with_parent` (how :func:`run_child` launches a module it cannot change).

The signal is delivered when the *thread* that started the child ends; every child here is started by the main
thread. Standard library only.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["die_with_parent", "loader_worker_init", "pid_alive", "run_child"]

_PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (Linux), or None where there is none."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:  # the symbols already loaded (libc's among them): no library search, no subprocess
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    return getattr(_libc, "prctl", None)


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Make the kernel send ``sig`` to this process when its parent dies; True when that is set up.

    Args:
        parent: the process id of the expected parent; when this process's parent is already another one (it died
            before the call), ``sig`` is sent to this process at once. None: the current parent.
        sig: the signal (SIGKILL by default: no cleanup in the child; SIGTERM lets a child clean up).
    """
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host: it exists (another user's counts) and is no zombie (a child
    that ended and was not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): it exists
        return True


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(0)


def _worker_init(parent: int, inner: Callable[[int], None] | None, worker_id: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, _exit_quietly)
    if inner is not None:
        inner(worker_id)


def loader_worker_init(inner: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A ``worker_init_fn`` for a ``torch.utils.data.DataLoader`` created in this process: each worker is killed
    when this process dies, even by SIGKILL (then ``inner(worker_id)`` runs, if given). Picklable (spawn works).

    A worker also ends at once and quietly (exit status 0) on SIGTERM from anyone, where PyTorch's own handler
    exits quietly only on its parent's: ``timeout`` and schedulers signal the whole process group, and a worker
    killed by that signal would turn the stage's clean stop into a "DataLoader worker is killed by signal" error.
    """
    return functools.partial(_worker_init, os.getpid(), inner)


def run_child(cmd: Sequence[str], env: Mapping[str, str] | None = None, grace: float = 30.0) -> int:
    """Run ``cmd`` and return its exit status; it gets SIGTERM when this process dies.

    ``cmd`` must be ``[python, "-m", module, *args]`` to be tied to this process (it is then started through
    ``python -m pipeline.processes``); another command runs as it is. When this process is interrupted or
    terminated while waiting (an exception, such as KeyboardInterrupt), the child gets SIGTERM, ``grace`` seconds
    to end, then SIGKILL, and the exception propagates.
    """
    cmd = list(cmd)
    if len(cmd) >= 3 and cmd[1] == "-m" and _prctl() is not None:
        cmd = [cmd[0], "-m", __name__, str(os.getpid()), *cmd[2:]]
    proc = subprocess.Popen(cmd, env=dict(env) if env is not None else None)
    try:
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipeline.processes PARENT_PID MODULE ARGS...``: ``python -m MODULE ARGS...``, tied to PARENT_PID
    by SIGTERM."""
    import runpy

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        sys.exit("usage: python -m pipeline.processes PARENT_PID MODULE [ARGS...]")
    die_with_parent(int(args[0]), signal.SIGTERM)
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
