"""dvc.yaml and the stage modules agree: declared params, code deps, and the CLI lists every stage."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.app import app
from tests.conftest import REPO
from tests.import_graph import module_file, project_imports

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _command(stage: dict) -> str:
    cmd = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    m = re.match(r"python -m stages (\w+)", cmd)
    assert m, f"stage cmd must be `python -m stages <command>`: {cmd}"
    return m.group(1)


#: placeholders of the stage modules' DECLARED lists → their dvc.yaml spelling (foreach key or list item, matrix items)
PLACEHOLDERS = {"{name}": "${key}", "{method}": "${item.method}", "{fold}": "${item.fold}",
                "{dataset}": "${item.dataset}", "{task_set}": "${finetune.common.task_set}",
                "{pretrain_dataset}": "${pretrain.train.dataset}", "{item}": "${item}",
                "{cari_task_set}": "${cari.common.task_set}", "{disjoint_task_set}": "${disjoint.common.task_set}",
                "{disjoint_dataset}": "${disjoint.dataset}"}


def _dvc_spelling(section: str) -> str:
    for placeholder, dvc in PLACEHOLDERS.items():
        section = section.replace(placeholder, dvc)
    return section


@pytest.mark.parametrize("stage_name", sorted(DVC))
def test_declared_params_match_stage_module(stage_name):
    stage = DVC[stage_name]
    body = stage.get("do", stage)
    module = importlib.import_module(f"stages.{_command(stage)}")
    declared_in_code = [_dvc_spelling(s) for s in module.DECLARED]
    assert body["params"] == declared_in_code
    # params read only for speed (RUNTIME) are neither tracked nor inside a tracked section
    for runtime in getattr(module, "RUNTIME", []):
        assert not any(runtime == d or runtime.startswith(d + ".") for d in body["params"]), runtime
    assert f"stages/{_command(stage)}.py" in body["deps"], "a stage depends on its own module"
    for dep in body["deps"]:
        if dep.startswith(("pipeline/", "stages/")):
            assert (REPO / dep).exists(), f"{stage_name}: declared dep {dep} does not exist"


#: modules that cannot change a stage's outputs (logging and the provenance it records, the CLI shell that
#: dispatches to the command), so they are not code deps; the CLI shell also imports every other command, which is
#: not followed
NOT_DEPS = {"stages/tracking.py", "stages/provenance.py", "pipeline/__init__.py", "pipeline/data/__init__.py"}
NOT_FOLLOWED = {"stages", "stages.app", "stages.__main__"}


def _closure(mod: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [mod]
    while todo:
        file = module_file(todo.pop())
        if file is None or file in seen:
            continue
        seen.add(file)
        for m in project_imports(file):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = m.split(".")
            todo.extend(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p not in NOT_FOLLOWED)
    return seen


def _dep_files(deps: list[str]) -> set[str]:
    """The project ``.py`` files the code deps name (a folder dep: every module below it)."""
    out = set()
    for dep in deps:
        path = REPO / dep
        if path.is_dir():
            out |= {p.relative_to(REPO).as_posix() for p in path.rglob("*.py") if "__pycache__" not in p.parts}
        elif dep.endswith(".py"):
            out.add(dep)
    return out - NOT_DEPS


@pytest.mark.parametrize("stage_name", sorted(DVC))
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage_name):
    """A stage's code deps are its import closure (imports inside functions included): every project module the
    command can run is a dep, and no dep is a module it never imports (whose edit would re-run it for nothing)."""
    stage = DVC[stage_name]
    body = stage.get("do", stage)
    code = [d.rstrip("/") for d in body["deps"] if d.startswith(("pipeline/", "stages/"))]
    runs = {f.relative_to(REPO).as_posix() for f in _closure(f"stages.{_command(stage)}")} - NOT_DEPS
    declared = _dep_files(code)
    assert not runs - declared, f"{stage_name} runs modules dvc.yaml does not list: {sorted(runs - declared)}"
    assert not declared - runs, f"{stage_name} lists modules it never imports: {sorted(declared - runs)}"


def test_cli_lists_every_stage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in DVC.values():
        assert _command(stage) in result.output


# --- the finetune matrix: one instance per (dataset, fold, method), each tracking only its own method block ---------

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _finetune_instances(params: dict = PARAMS) -> set[str]:
    return {f"finetune@{d}-{f}-{m}" for d in params["finetune"]["datasets"] for f in params["folds"]["run"]
            for m in params["finetune"]["run_methods"]}


def _cari_train_instances(params: dict = PARAMS) -> set[str]:
    return {f"cari_train@{d}-{m}" for d in params["cari"]["datasets"] for m in params["cari"]["run_methods"]}


def _disjoint_train_instances(params: dict = PARAMS) -> set[str]:
    return {f"disjoint_train@{f}-{m}" for f in params["disjoint"]["folds"] for m in params["disjoint"]["run_methods"]}


def test_dvc_stage_list_has_one_finetune_stage_per_dataset_fold_and_method():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dvc", "stage", "list"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("finetune@")}
    assert listed == _finetune_instances()
    assert len(listed) == len(PARAMS["finetune"]["datasets"]) * len(PARAMS["folds"]["run"]) * len(
        PARAMS["finetune"]["run_methods"])


@pytest.fixture
def dvc_copy(tmp_path):
    """dvc.yaml + a params.yaml in a scratch DVC repo; ``tracked()`` = {stage: its tracked param values}."""
    import subprocess
    import sys

    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)

    def tracked(params: dict) -> dict[str, dict]:
        from dvc.dependency.param import ParamsDependency
        from dvc.repo import Repo

        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with Repo(str(tmp_path)) as repo:
            return {st.name: {k: v for d in st.deps if isinstance(d, ParamsDependency)
                              for k, v in d.read_params().items()}
                    for st in repo.index.stages}

    return tracked


def test_finetune_instance_tracks_its_declared_params(dvc_copy):
    from stages import finetune

    values = dvc_copy(PARAMS)
    task_set = PARAMS["finetune"]["common"]["task_set"]
    for d in PARAMS["finetune"]["datasets"]:
        for m in PARAMS["finetune"]["run_methods"]:
            expected = [s.format(method=m, dataset=d, task_set=task_set) for s in finetune.DECLARED]
            assert list(values[f"finetune@{d}-0-{m}"]) == expected
            assert values[f"finetune@{d}-0-{m}"][f"finetune.methods.{m}"] == PARAMS["finetune"]["methods"][m]


#: the params check tracks every tracked param, so every edit that re-runs a stage re-runs it too (its output is
#: constant: it makes no other stage stale)
CHECK = {"check_params"}


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if name in after and before[name] != after[name]}


def test_changing_one_method_block_changes_only_that_methods_stages(dvc_copy):
    import copy

    before = dvc_copy(PARAMS)
    params = copy.deepcopy(PARAMS)
    params["finetune"]["methods"]["dynamic"]["lr_weights"] = 0.0123
    assert _changed(before, dvc_copy(params)) == CHECK | {f"finetune@{d}-{f}-dynamic"
                                                          for d in PARAMS["finetune"]["datasets"]
                                                          for f in PARAMS["folds"]["run"]}
    params = copy.deepcopy(PARAMS)
    params["finetune"]["common"]["epochs"] += 1
    assert _changed(before, dvc_copy(params)) == CHECK | _finetune_instances()
    params = copy.deepcopy(PARAMS)  # read for speed only: no stage is stale
    params["finetune"]["runtime"].update(device="cpu", eval_batch_size=7, threads=1, compile=True)
    assert _changed(before, dvc_copy(params)) == set()


def test_changing_one_caricature_method_changes_only_its_caricature_runs(dvc_copy):
    """``dvc exp run -S cari.methods.dynamic.lr_weights=0.05`` re-runs the dynamic caricature runs (and, through
    their outputs, the caricature report), nothing of the FR+FER tables."""
    import copy

    before = dvc_copy(PARAMS)
    params = copy.deepcopy(PARAMS)
    params["cari"]["methods"]["dynamic"]["lr_weights"] = 0.05
    assert _changed(before, dvc_copy(params)) == CHECK | {f"cari_train@{d}-dynamic" for d in PARAMS["cari"]["datasets"]}
    params = copy.deepcopy(PARAMS)
    params["cari"]["common"]["centers"]["policy"] = "shared_b1"
    assert _changed(before, dvc_copy(params)) == CHECK | _cari_train_instances()


def test_the_task_set_is_tracked_by_the_stages_that_train_evaluate_and_report_it(dvc_copy):
    import copy

    before = dvc_copy(PARAMS)
    params = copy.deepcopy(PARAMS)
    task_set = params["finetune"]["common"]["task_set"]
    params["task_sets"][task_set]["tasks"]["expression"]["head"]["hidden"] = 64
    per_fold = {f"pixel_baseline@{d}-{f}" for d in PARAMS["finetune"]["datasets"] for f in PARAMS["folds"]["run"]}
    # the disjoint-datasets runs train the same task set (disjoint.common.task_set)
    assert _changed(before, dvc_copy(params)) == (CHECK | _finetune_instances() | per_fold | {"report"}
                                                  | _disjoint_train_instances() | {"disjoint_report"})
    params = copy.deepcopy(PARAMS)  # another task set: nothing runs it (only the check reads it)
    params["task_sets"]["other"] = copy.deepcopy(params["task_sets"][task_set])
    assert _changed(before, dvc_copy(params)) == CHECK


def test_pretrain_tracks_its_training_settings_but_not_its_speed_settings(dvc_copy):
    import copy

    before = dvc_copy(PARAMS)
    params = copy.deepcopy(PARAMS)
    params["pretrain"]["runtime"].update(device="cpu", workers=7, threads=1, eval_batch_size=7, decode="device",
                                         compile=True)
    assert _changed(before, dvc_copy(params)) == set()
    params = copy.deepcopy(PARAMS)
    params["pretrain"]["train"]["steps"] += 1  # finetune re-runs through its dep on model.pt, not through params
    assert _changed(before, dvc_copy(params)) == CHECK | {"pretrain"}
    params = copy.deepcopy(PARAMS)
    params["pretrain"]["train"]["dataset"] = "demo_oulu"  # finetune's init: pretrain names the pretrain dataset
    # (the report reads it too: the demo checks include the pretraining dataset's alignment)
    # (the caricature and disjoint-datasets runs start from the same model)
    assert _changed(before, dvc_copy(params)) == (CHECK | {"pretrain", "report"} | _finetune_instances()
                                                  | _cari_train_instances() | _disjoint_train_instances())


def test_a_disjoint_method_edit_reruns_only_that_methods_runs(dvc_copy):
    """``dvc exp run -S disjoint.methods.sa_mtl.transfer.density_t=0.5`` re-runs only the sa_mtl runs (and the check);
    a change of disjoint.common re-runs every disjoint run and nothing of the FR+FER or caricature families."""
    import copy

    before = dvc_copy(PARAMS)
    params = copy.deepcopy(PARAMS)
    params["disjoint"]["methods"]["sa_mtl"]["transfer"]["density_t"] = 0.5
    assert _changed(before, dvc_copy(params)) == CHECK | {f"disjoint_train@{f}-sa_mtl" for f in
                                                          PARAMS["disjoint"]["folds"]} | {"disjoint_report"}
    params = copy.deepcopy(PARAMS)
    params["disjoint"]["common"]["transfer"]["cluster_k"] = 5
    assert _changed(before, dvc_copy(params)) == CHECK | _disjoint_train_instances() | {"disjoint_report"}


def test_report_params_rerun_only_the_report(dvc_copy):
    import copy

    before = dvc_copy(PARAMS)
    # (the disjoint-datasets report shares the VAL column and the bootstrap settings)
    for key, value in (("bootstrap", 500), ("reference", "static"), ("curves_methods", ["dynamic"]),
                       ("val_far", 0.01)):
        params = copy.deepcopy(PARAMS)
        params["report"][key] = value
        shared = {"disjoint_report"} if key in ("bootstrap", "val_far") else set()
        assert _changed(before, dvc_copy(params)) == CHECK | {"report"} | shared, key
    # the report lists the run's methods: dropping one changes the report, and no other stage's params
    params = copy.deepcopy(PARAMS)
    params["finetune"]["run_methods"] = [m for m in params["finetune"]["run_methods"] if m != "gradnorm"]
    after = dvc_copy(params)
    assert set(before) - set(after) == {f"finetune@{d}-{f}-gradnorm" for d in PARAMS["finetune"]["datasets"]
                                        for f in PARAMS["folds"]["run"]}
    # (the disjoint report shows the full-label finetune rows of finetune.run_methods)
    assert {name for name in after if before[name] != after[name]} == CHECK | {"report", "disjoint_report"}


def test_a_dataset_label_set_edit_reaches_only_that_datasets_stages(dvc_copy):
    """Label sets live in their dataset's entry: editing one re-runs that dataset's folds, fine-tuning and pixel
    baseline (and the report), never another dataset's."""
    import copy

    params = copy.deepcopy(PARAMS)
    other = copy.deepcopy(params["datasets"]["demo_oulu"])
    other["source"]["first_identity"] = 500
    params["datasets"]["other_oulu"] = other
    params["folds"]["datasets"]["other_oulu"] = copy.deepcopy(params["folds"]["datasets"]["demo_oulu"])
    params["finetune"]["datasets"] = ["demo_oulu", "other_oulu"]
    before = dvc_copy(params)
    edited = copy.deepcopy(params)
    edited["datasets"]["other_oulu"]["label_sets"]["expression"] = "oulu_seven"
    changed = _changed(before, dvc_copy(edited))
    assert changed == (CHECK | {"folds@other_oulu", "report", "cari_report"}
                       | {s for s in _finetune_instances(params) if "other_oulu" in s}
                       | {f"pixel_baseline@other_oulu-{f}" for f in params["folds"]["run"]})


def test_check_params_runs_first_and_tracks_every_tracked_param():
    """Every stage depends on the params check's output, and the check tracks every param some stage tracks: an edit
    that would re-run any stage re-runs the check first, so a bad value stops ``dvc repro`` before DVC deletes the
    outputs of a stage."""
    from stages import check_params

    check = DVC["check_params"]
    assert check["outs"] == [{"data/params-valid.txt": {"cache": False, "persist": True}}]
    tracked = check["params"]
    for name, stage in DVC.items():
        if name == "check_params":
            continue
        body = stage.get("do", stage)
        assert "data/params-valid.txt" in body["deps"], name
        for param in body["params"]:
            assert any(param == t or param.startswith(t + ".") for t in tracked), f"{name}: {param} is not checked"
    assert check_params.CONTENT.endswith("\n") and "{" not in check_params.CONTENT  # constant, nothing formatted in
