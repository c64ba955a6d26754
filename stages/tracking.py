"""MLflow tracking for stage commands (the only place besides other ``stages/`` modules that imports mlflow).

- Store: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``; artifacts in ``<repo root>/mlruns``.
  The repo root is ``$DVC_ROOT`` (set by DVC for every stage, also for queued experiments), else the git top level,
  else the current folder. Both paths are git-ignored.
- One experiment per pipeline (``$DMTL_EXPERIMENT``, default ``dynamic-mtl-face``), one run per stage invocation.
- Each run logs the stage's declared params sections (flattened) and is tagged with the git commit and dirty flag,
  the stage name, the DVC stage/experiment names and the md5 of every input it reads, hashed from the files when it
  starts (:mod:`stages.provenance`); its manifests and fold files are MLflow dataset inputs.
- ``DMTL_MLFLOW=0`` turns tracking off (the stage still runs and writes its outputs).
- Runs that make one results table share a ``group`` tag (:func:`group_key`): the ``finetune`` and
  ``pixel_baseline`` runs of every fold and the ``report`` run, which nests the others under itself
  (:meth:`RunLogger.adopt_runs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import StageParams
from pipeline.processes import pid_alive
from stages.provenance import Input, input_tags, log_dataset_inputs

__all__ = ["RunLogger", "git_state", "group_key", "lock_hashes", "repo_root", "run_item", "stage_run", "tracking_uri"]

EXPERIMENT_DEFAULT = "dynamic-mtl-face"
#: the experiment tag MLflow 3's UI reads to choose its layout: model training (runs first), not GenAI (traces)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def repo_root() -> Path:
    """``$DVC_ROOT``, else the git top level of the current folder, else the current folder."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(out.stdout.strip()).resolve()
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd().resolve()


def tracking_uri(root: Path | None = None) -> str:
    """The tracking store URI: ``$MLFLOW_TRACKING_URI`` or the repo's sqlite file."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def git_state(root: Path) -> dict[str, str]:
    """``{"git.commit": sha, "git.dirty": "true"|"false"}``; empty when ``root`` is not a git work tree."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git.commit": sha, "mlflow.source.git.commit": sha, "git.dirty": str(bool(dirty)).lower()}


def lock_hashes(root: Path, inputs: Sequence[str]) -> dict[str, str]:
    """``dvc.input.<path>.md5`` (and ``.nfiles``) for each path that an upstream stage's ``outs`` lists in
    ``dvc.lock``: what DVC last recorded, used only by :func:`group_key` (a run's provenance tags come from the files
    themselves: :mod:`stages.provenance`).
    """
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    wanted = {str(Path(p)) for p in inputs}
    tags: dict[str, str] = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            path = str(Path(out.get("path", "")))
            if path in wanted and out.get("md5"):
                tags[f"dvc.input.{path}.md5"] = out["md5"]
                if "nfiles" in out:
                    tags[f"dvc.input.{path}.nfiles"] = str(out["nfiles"])
    return tags


def run_item(dataset: str, fold: int, method: str) -> str:
    """``<dataset>/fold<k>/<method>``: the ``item`` tag of one (fold, method) run of a results table (the
    ``finetune`` and ``pixel_baseline`` runs), which the ``report`` run looks up to nest them."""
    return f"{dataset}/fold{fold}/{method}"


def group_key(params: Any, dataset: str, root: Path | None = None, commit: str | None = None,
              family: str = "finetune") -> str:
    """The key shared by the runs of one results table (one dataset's section): a hash of the configuration, the
    commit and the data.

    Hashed: ``finetune.common``, the task set it names, ``folds`` (k, assignment, seed and ``dataset``'s settings),
    ``dataset``'s label sets, ``pretrain.train``, ``pixel_baseline``, the git commit, and the ``dvc.lock`` md5 of the
    dataset's aligned faces and folds. Not hashed: the method blocks (each method's run carries its own params) and
    ``folds.run`` (adding a fold keeps the group).

    Args:
        params: the validated :class:`pipeline.config.Params`.
        dataset: the fine-tuning dataset of the table.
        root: the repository (default: :func:`repo_root`).
        commit: the git commit when the caller knows it already (default: asks git).
    """
    import hashlib

    from pipeline.config import plain

    root = root or repo_root()
    if family == "cari":
        return _cari_group_key(params, dataset, root, commit)
    folds = params.folds
    common = params.finetune.common
    data = lock_hashes(root, [f"data/aligned/{dataset}", f"data/folds/{dataset}"])
    content = {
        "dataset": dataset,
        "finetune.common": plain(common),
        "task_set": plain(params.task_sets.get(common.task_set)),
        "label_sets": plain(params.datasets[dataset].label_sets) if dataset in params.datasets else None,
        "folds": {"k": folds.k, "assignment": folds.assignment, "seed": folds.seed,
                  "dataset": folds.datasets[dataset].model_dump(mode="json") if dataset in folds.datasets else None},
        "pretrain.train": plain(params.pretrain.train),
        "pixel_baseline": params.pixel_baseline.model_dump(mode="json"),
        "commit": commit if commit is not None else git_state(root).get("git.commit", ""),
        "data": {k: v for k, v in data.items() if k.endswith(".md5")},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def _cari_group_key(params: Any, dataset: str, root: Path, commit: str | None) -> str:
    """:func:`group_key` of a caricature table: ``cari.common``, its task set, the dataset's protocol, reader and crop
    convention, ``align.landmark_box``, ``pretrain.train``, ``pixel_baseline``, the commit and the ``dvc.lock`` md5 of
    the dataset's aligned faces and split."""
    import hashlib

    from pipeline.config import plain

    common = params.cari.common
    ds = params.datasets.get(dataset)
    data = lock_hashes(root, [f"data/aligned/{dataset}", f"data/cari/{dataset}/split"])
    content = {
        "family": "cari", "dataset": dataset, "cari.common": plain(common),
        "task_set": plain(params.task_sets.get(common.task_set)),
        "dataset_config": None if ds is None else {k: plain(getattr(ds, k))
                                                   for k in ("reader", "protocol", "align_convention")},
        "landmark_box": plain(params.align.landmark_box),
        "pretrain.train": plain(params.pretrain.train),
        "pixel_baseline": params.pixel_baseline.model_dump(mode="json"),
        "commit": commit if commit is not None else git_state(root).get("git.commit", ""),
        "data": {k: v for k, v in data.items() if k.endswith(".md5")},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class RunLogger:
    """A thin handle on the active MLflow run (or a no-op when tracking is off).

    ``groups``: the :func:`group_key` of each results table the run belongs to, by dataset (empty: none);
    ``group``: the only one (the run's ``group`` tag), or None.
    """

    def __init__(self, mlflow: Any | None, run_id: str | None = None, groups: Mapping[str, str] | None = None):
        self._mlflow = mlflow
        self.run_id = run_id
        self.groups = dict(groups or {})
        self.group = next(iter(self.groups.values())) if len(self.groups) == 1 else None

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None,
                    skip: Mapping[str, Set[int]] | None = None) -> None:
        """Log scalars at ``step``; a key whose ``step`` is in ``skip[key]`` (see :meth:`logged_steps`) is left out."""
        if self._mlflow:
            if skip is not None and step is not None:
                metrics = {k: v for k, v in metrics.items() if step not in skip.get(k, ())}
            if metrics:
                self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def logged_steps(self, keys: Iterable[str]) -> dict[str, set[int]]:
        """The steps this run already holds for each metric key (empty when tracking is off).

        A resumed stage passes this as ``skip`` so that a kill in the middle of logging an epoch leaves every
        step logged exactly once: MLflow, not a side file, is the record of what reached it.
        """
        if not self._mlflow or self.run_id is None:
            return {}
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        return {k: {m.step for m in client.get_metric_history(self.run_id, k)} for k in keys}

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self._mlflow:
            self._mlflow.log_dict(obj, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self._mlflow:
            self._mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self._mlflow:
            self._mlflow.set_tags(tags)

    def adopt_runs(self, items: Sequence[str], group: str | None = None) -> list[dict[str, str]]:
        """Nest the runs of ``items`` (:func:`run_item`) under this run (tag ``mlflow.parentRunId``).

        Per item the newest run tagged with ``group`` (default: this run's ``group``); else the newest run of that
        item from another configuration (its outputs were restored from DVC's cache); else none (restored from the
        cache of another store: nothing to nest). Returns one row per item: ``item``, ``run_id`` ("" when none) and
        ``status`` (``this group`` | ``other group <key>`` | ``no run in this store``). One search finds the whole
        group; only the items missing from it are searched one by one.
        """
        group = group or self.group
        if not self._mlflow or self.run_id is None or group is None:
            return []
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        experiment = client.get_run(self.run_id).info.experiment_id
        newest: dict[str, Any] = {}
        wanted = set(items)
        for run in client.search_runs([experiment], f"tags.group = '{group}'", max_results=50000,
                                      order_by=["attributes.start_time DESC"]):
            item = run.data.tags.get("item")
            if item in wanted and item not in newest:
                newest[item] = run
        rows = []
        for item in items:
            status, found = "no run in this store", newest.get(item)
            if found is not None:
                status = "this group"
            else:
                runs = client.search_runs([experiment], f"tags.item = '{item}'",
                                          order_by=["attributes.start_time DESC"], max_results=1)
                if runs:
                    found = runs[0]
                    status = f"other group {found.data.tags.get('group', '?')}"
            if found is not None and found.info.run_id != self.run_id:
                client.set_tag(found.info.run_id, "mlflow.parentRunId", self.run_id)
            rows.append({"item": item, "run_id": found.info.run_id if found is not None else "", "status": status})
        return rows

    def log_rows(self, rows: Sequence[dict[str, Any]], step_key: str = "step", prefix: str = "",
                 skip: Mapping[str, Set[int]] | None = None) -> None:
        """Log table rows as per-step metrics in batches (one series per numeric column; ``step_key`` = step).

        Empty strings and non-numeric cells are skipped, and so is a (key, step) found in ``skip``.
        """
        if not self._mlflow or not rows:
            return
        import time

        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        now = int(time.time() * 1000)
        batch: list[Metric] = []
        for row in rows:
            step = int(row[step_key])
            for key, value in row.items():
                if key == step_key or isinstance(value, str) or value is None:
                    continue
                if skip is not None and step in skip.get(f"{prefix}{key}", ()):
                    continue
                batch.append(Metric(f"{prefix}{key}", float(value), now, step))
                if len(batch) == 1000:
                    client.log_batch(self.run_id, metrics=batch)
                    batch = []
        if batch:
            client.log_batch(self.run_id, metrics=batch)


@contextlib.contextmanager
def stage_run(stage: str, params: StageParams, *, inputs: Sequence[str | Input] = (), item: str | None = None,
              resume_file: Path | None = None, group: Any | None = None) -> Iterator[RunLogger]:
    """Open one MLflow run for a stage invocation; it ends FAILED if the body raises, KILLED if it is interrupted
    (Ctrl-C, SIGTERM: a :class:`KeyboardInterrupt`).

    The run is tagged with this ``host`` and ``pid``; before it starts, the RUNNING runs that dead processes of this
    host left (a SIGKILL) are ended KILLED (:func:`mark_dead_runs_killed`).

    Args:
        stage: the command name (``download``, ``manifest``…).
        params: the stage's declared sections; logged flattened as run params.
        inputs: what the stage reads (:class:`stages.provenance.Input`, or a repo-relative path): each one's md5,
            computed from the files now, becomes a tag ``input.<path>.md5``; those naming a dataset are logged as
            MLflow dataset inputs.
        item: the foreach item (a dataset name), part of the run name.
        resume_file: a file holding the id of this job's run: when it names a run that exists, that run is
            reopened (a resumed job logs into its first run instead of a duplicate); the id of a new run is
            written there.
        group: ``(params, dataset)`` of a run that belongs to a results table (the validated
            :class:`pipeline.config.Params` and the table's dataset): its :func:`group_key` becomes the ``group``
            tag; ``(params, [dataset, ...])`` for a run over several tables (the report): one ``group.<dataset>``
            tag each (one dataset: the ``group`` tag); a third element names the table family (``cari``: the
            caricature tables; default ``finetune``).
    """
    if os.environ.get("DMTL_MLFLOW", "1").lower() in {"0", "false", "no", "off"}:
        yield RunLogger(None)
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
    root = repo_root()
    mlflow.set_tracking_uri(tracking_uri(root))
    name = os.environ.get("DMTL_EXPERIMENT", EXPERIMENT_DEFAULT)
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(root / "mlruns").as_uri())
    mlflow.set_experiment(name)
    mlflow.set_experiment_tag(*EXPERIMENT_KIND)  # also on an experiment an older version created
    read = [i if isinstance(i, Input) else Input(str(i)) for i in inputs]
    input_tags_, digests, hash_seconds = input_tags(root, read)
    tags = {"stage": stage, **git_state(root), **input_tags_}
    if item is not None:
        tags["item"] = item
    groups: dict[str, str] = {}
    if group is not None:
        group_params, datasets, *family = group
        for dataset in [datasets] if isinstance(datasets, str) else datasets:
            groups[dataset] = group_key(group_params, dataset, root, commit=tags.get("git.commit", ""),
                                        family=family[0] if family else "finetune")
        tags.update({"group": next(iter(groups.values()))} if len(groups) == 1 else
                    {f"group.{d}": key for d, key in groups.items()})
    dvc_env = (("DVC_STAGE", "dvc.stage"), ("DVC_EXP_NAME", "dvc.exp"), ("DVC_EXP_BASELINE_REV", "dvc.exp.baseline"))
    for env, tag in dvc_env:
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    run_name = os.environ.get("DVC_STAGE") or (f"{stage}@{item}" if item else stage)
    tags.update(host=_host(), pid=str(os.getpid()))
    mark_dead_runs_killed(mlflow.get_experiment_by_name(name).experiment_id)
    previous = _previous_run(mlflow, resume_file)
    start = {"run_id": previous} if previous else {"run_name": run_name}
    with mlflow.start_run(**start, tags=tags) as run:
        if resume_file is not None:
            resume_file.parent.mkdir(parents=True, exist_ok=True)
            resume_file.write_text(run.info.run_id + "\n")
        if previous:
            mlflow.set_tag("resumed", "true")
        flat = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.as_flat_dict().items()}
        mlflow.log_params(flat)
        log_dataset_inputs(mlflow, root, read, digests)
        if read:
            mlflow.log_metric("provenance_seconds", round(hash_seconds, 3))
        try:
            yield RunLogger(mlflow, run.info.run_id, groups=groups)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (stages.common.Terminated): KILLED, not FAILED
            mlflow.end_run("KILLED")
            raise


def mark_dead_runs_killed(experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of the experiment whose process (tags ``host`` and ``pid``) was on this host
    and is gone: what a stage killed by SIGKILL leaves. Returns their ids.

    One search of the experiment's RUNNING runs; a run of another host, or without those tags, is left alone (as is
    one whose pid a new process has taken meanwhile: a later start ends it).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    host, killed = _host(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if tags.get("host") == host and tags.get("pid", "").isdigit() and not pid_alive(int(tags["pid"])):
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


def _host() -> str:
    import socket

    return socket.gethostname()


def _previous_run(mlflow: Any, resume_file: Path | None) -> str | None:
    """The run id stored in ``resume_file`` if that run still exists."""
    if resume_file is None or not resume_file.is_file():
        return None
    run_id = resume_file.read_text().strip()
    try:
        mlflow.get_run(run_id)
    except Exception:  # noqa: BLE001 - a deleted run or another store: start a new one
        return None
    return run_id
