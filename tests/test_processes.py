"""Child processes die with their parent (pipeline/processes.py): the demo's pool workers and a launched command
(``torchrun``'s way) do not outlive a parent killed by SIGKILL, which runs no cleanup. The DataLoader workers of the
align and pretrain stages are checked by those stages' SIGKILL tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.conftest import REPO, descendants, still_alive

#: a parent with a spawn pool initialised as the demo generator's, and a ``python -m`` command run by run_child
PARENT = """
import multiprocessing, os, sys
from pipeline.data.demo import _worker_init
from pipeline.processes import run_child

pool = multiprocessing.get_context("spawn").Pool(2, initializer=_worker_init, initargs=(os.getpid(),))
pool.map(abs, [1, 2])
print("ready", flush=True)
run_child([sys.executable, "-m", "timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)"])
"""


def test_pool_workers_and_a_launched_command_die_with_a_killed_parent():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not any("timeit" in " ".join(p.cmdline()) for p in descendants(proc.pid)):
            assert time.monotonic() < deadline and proc.poll() is None, "the command was not started"
            time.sleep(0.05)
        children = descendants(proc.pid)
        assert len(children) >= 3  # two pool workers, the command (and maybe multiprocessing's resource tracker)
        proc.kill()  # the parent only: its children get no signal from the test
        proc.wait()
        assert still_alive(children) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_child_whose_parent_is_already_gone_gets_the_signal_at_once():
    """The race ``die_with_parent`` closes: a parent that died before the call (here: 1 is not the parent)."""
    code = ("import signal, time\nfrom pipeline.processes import die_with_parent\n"
            "assert die_with_parent(1, signal.SIGTERM)\ntime.sleep(60)")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60)
    assert res.returncode == -signal.SIGTERM and time.monotonic() - t0 < 30
