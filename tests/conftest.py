"""Shared test setup: stable Typer output, an isolated MLflow store, helpers to write tiny params files."""

from __future__ import annotations

import os

# Read by typer/rich at import time: plain, wide, uncoloured output for assertions.
os.environ.setdefault("TERMINAL_WIDTH", "200")
os.environ.setdefault("_TYPER_FORCE_DISABLE_TERMINAL", "1")
os.environ.setdefault("TYPER_USE_RICH", "0")
os.environ.setdefault("NO_COLOR", "1")
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - pytest-xdist's types
    """``make test`` runs ``pytest -n 2 --dist loadfile``: each test file runs whole on one worker (its module
    fixtures are built once), and the end-to-end files (``tests/test_e2e*.py``) share one worker, as they share
    one session fixture (the repro'd e2e repository, the longest setup of the suite)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "tests/test_e2e*" if file.startswith("tests/test_e2e") else file

    return FileScheduling(config, log)


#: one short epoch of a small input on one thread: the fine-tuning settings of the end-to-end `dvc repro` tests
TINY_FINETUNE = {"finetune.common.network.input_size": 80, "finetune.common.batch_size": 4,
                 "finetune.common.epoch_size": 2, "finetune.common.epochs": 1, "finetune.runtime.threads": 1,
                 "finetune.runtime.eval_batch_size": 32}


def tiny_params(**overrides) -> dict:
    """The repo's params.yaml with the demo datasets shrunk to a few subjects (for fast stage tests)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    oulu = params["datasets"]["demo_oulu"]["source"]
    oulu.update(n_subjects=3, frames=[4, 5], image_size=[160, 120])
    web = params["datasets"]["demo_webface"]["source"]
    web.update(n_identities=3, images_per_identity=3, image_size=[128, 128])
    params["datasets"]["demo_oulu"]["expected"] = {"subjects": 3, "sequences": 18}
    params["datasets"]["demo_webface"]["expected"] = {"subjects": 3, "images": 9}
    params["demo"]["workers"] = 1
    # pretraining on the 9 faces of the tiny demo_webface: a few steps of a small batch on one thread
    params["pretrain"]["runtime"].update(device="cpu", workers=0, threads=1, eval_batch_size=32)
    params["pretrain"]["train"].update(batch_size=4, steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    params["pretrain"]["train"]["schedule"]["boundaries"] = [3]
    params["pretrain"]["train"]["protocol"]["n_folds"] = 2
    params["pretrain"]["train"]["verification"]["folds"] = [0, 1]
    return set_dotted(params, overrides)


def tiny_test_fold(generator, size: int):  # noqa: ANN001, ANN201 - torch.Generator -> EvalData
    """A test fold of 8 random ``size``-px images from ``generator`` for in-process fine-tuning runs: 8 pairs (4 same)
    and labels of 4 identities and 3 expressions (one image without an expression label)."""
    import numpy as np
    import torch

    from pipeline.training.evaluate import EvalData

    return EvalData(
        images=torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=generator),
        pair_a=np.array([0, 1, 2, 3, 4, 5, 6, 0]), pair_b=np.array([1, 2, 3, 4, 5, 6, 7, 7]),
        same=np.array([True, False, True, False, True, False, True, False]),
        labels={"identity": np.array([0, 0, 1, 1, 2, 2, 3, 3]), "expression": np.array([0, 1, 2, -1, 0, 1, 2, 0])},
        class_names={"expression": ["a", "b", "c"]})


def set_dotted(params: dict, overrides: dict) -> dict:
    """``params`` (nested dicts) with each dotted key of ``overrides`` set to a copy of its value, in place."""
    for dotted, value in overrides.items():
        node = params
        *head, last = dotted.split(".")
        for part in head:
            node = node[part]
        node[last] = copy.deepcopy(value)
    return params


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_env(workdir: Path, mlflow_db: Path | None, **extra: str) -> dict[str, str]:
    """Environment of a stage subprocess in ``workdir``, as under DVC: this repo's code, no GPU, a private MLflow
    store at ``mlflow_db`` (None: tracking off), plus ``extra`` variables."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "DMTL_"))}
    env.update(PYTHONPATH=str(REPO), DVC_ROOT=str(workdir), DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true",
               CUDA_VISIBLE_DEVICES="", TERMINAL_WIDTH="200", **extra)
    env.update({"DMTL_MLFLOW": "0"} if mlflow_db is None else
               {"DMTL_MLFLOW": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}"})
    return env


def run_upstream(root: Path, params: dict, commands: list[tuple[str, str]]) -> Path:
    """Run stage ``commands`` (``(command, dataset)``, in order, in-process, without MLflow) in a fresh folder
    ``root`` with ``params``: the real upstream outputs a downstream stage test reads."""
    import os

    from typer.testing import CliRunner

    from stages.app import app

    cwd = os.getcwd()
    saved = {k: os.environ.get(k) for k in ("DMTL_MLFLOW", "DVC_ROOT")}
    os.chdir(root)
    os.environ.update(DMTL_MLFLOW="0", DVC_ROOT=str(root))
    try:
        write_params(root / "params.yaml", params)
        (root / "data").mkdir()
        (root / "data/protocols").symlink_to(REPO / "data/protocols")
        for cmd, name in commands:
            res = CliRunner().invoke(app, ["--params", "params.yaml", cmd, name])
            assert res.exit_code == 0, f"{cmd} {name}: {res.output}"
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root


def run_checked(args: list, cwd: Path, env: dict[str, str], check: bool = True):
    """``subprocess.run`` capturing output; with ``check`` a failure raises with the command's last output."""
    import subprocess

    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and res.returncode != 0:
        cmd = " ".join(map(str, args))
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def copy_repo(dst: Path, params: dict) -> dict[str, str]:
    """Copy the repo's tracked and untracked-not-ignored files (no generated data, no dvc.lock) into a new git
    repo ``dst`` with ``params``; returns the environment to run ``dvc`` there (its own MLflow store)."""
    import shutil
    import subprocess
    import sys

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    generated = ("data/raw/", "data/manifests/", "data/aligned/", "data/folds/", "data/finetune/", "data/pretrain/",
                 "data/work/", "metrics/", "reports/")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and (not rel.startswith(generated) or rel.startswith(("reports/bench/",
                                                                                "reports/benchmarks.md"))):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "dvc.lock").unlink(missing_ok=True)
    write_params(dst / "params.yaml", params)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "DVC_", "DMTL_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(dst))
    run_checked(["git", "init", "-q"], dst, env)
    run_checked(["git", "add", "-A"], dst, env)
    run_checked(["git", "commit", "-q", "-m", "copy"], dst, env)
    return env


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite tracking store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DMTL_MLFLOW", "1")
    yield uri
    try:
        import mlflow

        while mlflow.active_run():
            mlflow.end_run()
    except ImportError:
        pass


@pytest.fixture
def no_mlflow(monkeypatch):
    monkeypatch.setenv("DMTL_MLFLOW", "0")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module of tiny-tensor tests: as fast, and much faster on a busy 2-core box
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def e2e_repo(tmp_path_factory) -> dict:
    """The one end-to-end repository of the e2e modules, after its first ``dvc repro`` (``tests/e2e_repo.py``)."""
    from tests.e2e_repo import build

    return build(tmp_path_factory.mktemp("e2e"))


def descendants(pid: int) -> list:
    """The live child processes of ``pid``, recursively (``psutil.Process`` objects)."""
    import psutil

    return psutil.Process(pid).children(recursive=True)


def sigkill_stage_when(proc, ready, what: str, timeout: float = 240.0) -> list:
    """Wait until ``ready()`` is true while the stage subprocess ``proc`` (started with ``start_new_session``) runs,
    then SIGKILL the stage only, not its process group, as ``kill -9 <pid>`` would, and reap it. Returns its child
    processes at that moment (:func:`descendants`). Fails when the stage ends first or ``what`` does not happen
    within ``timeout`` s; whatever happens, nothing of the group is left running."""
    import os
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the stage ended (rc {proc.returncode}) before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.02)
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return children


def still_alive(procs: list, timeout: float = 10.0) -> list[str]:
    """The processes of ``procs`` still alive after ``timeout`` seconds (a zombie, never reaped once its parent is
    gone, counts as dead), as ``pid name`` strings: empty when every one ended."""
    import time

    import psutil

    def alive(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"{p.pid} {p.name()}" for p in procs if alive(p)]
