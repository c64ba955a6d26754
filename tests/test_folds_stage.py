"""The folds command through Typer's CliRunner, on manifests written into a temp folder."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.data.manifest import ManifestRecord, assign_identities, to_frame, write_manifest
from pipeline.folds.pair_file import parse_image_path, read_pair_file
from stages.app import app
from tests.conftest import set_dotted, tiny_params, write_params
from tests.test_folds import FOLD4, OULU, PAIR_FILE, PREFIX

runner = CliRunner()
PAIR_REL = "data/protocols/oulu_fold4_pairs_six.txt"


def _invoke(*args):
    return runner.invoke(app, ["--params", "params.yaml", *args])


def _write_manifest(path, dataset, frames_of: dict[tuple[str, str], list[int]]):
    """A manifest with the given kept frames per (subject, expression) sequence (Oulu layout)."""
    records = []
    for (s, e), frames in sorted(frames_of.items()):
        n = max(frames) + 1
        for f in frames:
            records.append(ManifestRecord(image_id=f"{dataset}/{s}/{e}/{f:05d}", path=f"{s}/{e}/{f:03d}.jpeg",
                                          dataset=dataset, subject=s, sequence=e, frame=f, n_frames=n, width=160,
                                          height=120, expression=e))
    write_manifest(to_frame(assign_identities(records)), path)


def _demo_frames(n_subjects: int) -> dict[tuple[str, str], list[int]]:
    return {(f"P{i:03d}", e): [0, 5, 6, 7] for i in range(1, n_subjects + 1) for e in OULU}


def _params(**overrides) -> dict:
    return set_dotted(tiny_params(**{"folds.k": 4, "folds.run": [0, 1]}), overrides)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    write_params(tmp_path / "params.yaml", _params())
    return tmp_path


def _error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_folds_writes_every_fold_metrics_and_an_mlflow_run(workdir, mlflow_uri):
    from mlflow.tracking import MlflowClient

    _write_manifest(workdir / "data/manifests/demo_oulu.parquet", "demo_oulu", _demo_frames(12))
    res = _invoke("folds", "demo_oulu")
    assert res.exit_code == 0, res.output
    out = workdir / "data/folds/demo_oulu"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"fold{k}.json" for k in range(4)] + [f"fold{k}-pairs.parquet" for k in range(4)])
    seen: list[str] = []
    for k in range(4):
        fold = json.loads((out / f"fold{k}.json").read_text())
        assert fold["fold"] == k and fold["k"] == 4 and fold["seed"] == 0 and fold["assignment"] == "contiguous"
        assert fold["test_subjects"] == [f"P{i:03d}" for i in range(3 * k + 1, 3 * k + 4)]
        assert not set(fold["test_subjects"]) & set(fold["train_subjects"])
        assert len(fold["test_image_ids"]) == 3 * 24 and len(fold["train_image_ids"]) == 9 * 24
        seen += fold["test_image_ids"]
        pairs = pd.read_parquet(out / f"fold{k}-pairs.parquet")
        assert pairs["type"].value_counts().to_dict() == {1: 36, 2: 36, 3: 36, 4: 36}  # 3 subj x 6 refs x 2
        assert set(pairs["reference_id"]) <= set(fold["test_image_ids"])
        assert set(pairs["input_id"]) <= set(fold["test_image_ids"])
    assert len(seen) == len(set(seen)) == 12 * 24
    metrics = json.loads((workdir / "metrics/folds/demo_oulu.json").read_text())
    assert metrics["subjects"] == 12 and metrics["images"] == 288 and metrics["pairs"] == 4 * 144
    assert metrics["per_fold"]["fold2"]["pairs_by_type"] == {"1": 36, "2": 36, "3": 36, "4": 36}
    assert metrics["pairs_skipped"] == 0 and metrics["images_in_no_test_fold"] == 0
    assert not list(workdir.rglob(".*.tmp-*"))

    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "folds@demo_oulu" and run.info.status == "FINISHED"
    assert run.data.params["folds.k"] == "4" and "folds.run" not in run.data.params
    assert run.data.params["folds.datasets.demo_oulu.pairs.kind"] == "expression"
    assert run.data.metrics["pairs"] == 4 * 144 and run.data.metrics["fold_test_subjects"] == 3


def test_same_params_same_outputs_and_skips_are_counted(workdir, no_mlflow):
    frames = _demo_frames(5)
    del frames[("P001", "Happiness")]  # P001 has no happy sequence
    _write_manifest(workdir / "data/manifests/demo_oulu.parquet", "demo_oulu", frames)
    write_params(workdir / "params.yaml", _params(**{"folds.k": 5}))
    assert _invoke("folds", "demo_oulu").exit_code == 0
    first = (workdir / "data/folds/demo_oulu/fold0-pairs.parquet").read_bytes()
    metrics = json.loads((workdir / "metrics/folds/demo_oulu.json").read_text())
    # one subject per fold: no type 3/4 anywhere; P001 (5 references) also lacks type 1 Happiness
    assert metrics["pairs_skipped_by_reason"] == {"type1:Happiness": 5, "type3:Happiness": 29,
                                                  "type3:Surprise": 29, "type4:Happiness": 29, "type4:Surprise": 29}
    assert _invoke("folds", "demo_oulu").exit_code == 0
    assert (workdir / "data/folds/demo_oulu/fold0-pairs.parquet").read_bytes() == first


def _fold4_setup(workdir, *, test_subjects=True, drop=()):
    """An 80-subject Oulu manifest with every image the original pair file names, and params for it."""
    shutil.copy(PAIR_FILE, workdir / "p.txt")
    (workdir / "data/protocols").mkdir(parents=True)
    shutil.copy(PAIR_FILE, workdir / PAIR_REL)
    named: dict[tuple[str, str], set[int]] = {}
    for p in read_pair_file(PAIR_FILE):
        for path in (p.input_path, p.reference_path):
            s, e, f = parse_image_path(path, PREFIX)
            named.setdefault((s, e), {0}).add(f)
    frames = {key: sorted(named.get(key, {0, 5, 6, 7})) for key in _demo_frames(80)}
    for key in drop:
        del frames[key]
    _write_manifest(workdir / "data/manifests/oulu.parquet", "oulu", frames)
    params = _params(**{"folds.k": 10})
    params["datasets"]["oulu"] = {"reader": "oulu_casia", "root": str(workdir / "oulu"), "role": "finetune",
                                  "label_sets": {"expression": "oulu_six"}, "source": {"kind": "licensed"},
                                  "options": {}, "expected": {}}
    params["folds"]["datasets"]["oulu"] = {
        "test_subjects": {4: FOLD4} if test_subjects else {},
        "pairs": {"kind": "expression", "label_set": "expression", "required": ["Happiness", "Surprise"],
                  "original_files": {4: PAIR_REL},
                  "prefix": PREFIX}}
    write_params(workdir / "params.yaml", params)
    return params


def test_oulu_fold4_uses_the_original_pairs_and_the_other_folds_the_recipe(workdir, no_mlflow):
    _fold4_setup(workdir)
    res = _invoke("folds", "oulu")
    assert res.exit_code == 0, res.output
    out = workdir / "data/folds/oulu"
    fold4 = json.loads((out / "fold4.json").read_text())
    assert fold4["test_subjects"] == FOLD4 and fold4["pairs"] == f"file:{PAIR_REL}"
    pairs = pd.read_parquet(out / "fold4-pairs.parquet")
    assert list(pairs["row"]) == list(range(384)) and pairs["is_same"].tolist() == [True] * 192 + [False] * 192
    assert pairs.iloc[0]["input_id"] == "oulu/P022/Happiness/00023"
    assert pairs.iloc[0]["reference_id"] == "oulu/P022/Anger/00000"
    other = json.loads((out / "fold0.json").read_text())
    assert other["pairs"] == "recipe" and other["test_subjects"] == [f"P{i:03d}" for i in range(1, 9)]
    assert len(pd.read_parquet(out / "fold0-pairs.parquet")) == 4 * 96
    metrics = json.loads((workdir / "metrics/folds/oulu.json").read_text())
    assert all(f["test_subjects"] == 8 for f in metrics["per_fold"].values())


def test_pair_file_subjects_outside_the_fold_fail(workdir, no_mlflow):
    _fold4_setup(workdir, test_subjects=False)  # contiguous fold 4 = P033..P040, not the pair file's subjects
    err = _error_line(_invoke("folds", "oulu"))
    assert "not test subjects of fold 4" in err and "test_subjects.4" in err
    assert not (workdir / "data/folds/oulu").exists() and not (workdir / "metrics/folds/oulu.json").exists()


def test_unmatched_pair_lines_over_the_fraction_fail(workdir, no_mlflow):
    params = _fold4_setup(workdir, drop=[("P022", "Anger"), ("P022", "Disgust"), ("P043", "Fear")])
    err = _error_line(_invoke("folds", "oulu"))
    assert "do not map to manifest images" in err and "max_unmatched_fraction=0.05" in err
    assert "row 0: image not in the manifest: subject P022, sequence Anger, frame 0" in err
    params["folds"]["datasets"]["oulu"]["pairs"]["max_unmatched_fraction"] = 0.5  # under it: counted, written
    write_params(workdir / "params.yaml", params)
    assert _invoke("folds", "oulu").exit_code == 0
    metrics = json.loads((workdir / "metrics/folds/oulu.json").read_text())
    n = metrics["pairs_unmatched"]
    assert n > 0 and metrics["per_fold"]["fold4"]["pairs"] == 384 - n
    assert metrics["pairs_unmatched_by_reason"] == {"image not in the manifest": n}


def test_lfw_kind_uses_the_pairs_file_folds(workdir, no_mlflow):
    (workdir / "data/protocols").mkdir(parents=True)
    (workdir / "data/protocols/pairs.txt").write_text(
        "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t2\nC\t2\tD\t1\n")
    records = [ManifestRecord(image_id=f"lfw/{n}/{n}_{i:04d}", path=f"{n}/{n}_{i:04d}.jpg", dataset="lfw",
                              subject=n, sequence="", frame=i, n_frames=1, width=250, height=250)
               for n, i in [("A", 1), ("A", 2), ("B", 1), ("C", 1), ("D", 1), ("E", 1)]]  # C_0002 is missing
    write_manifest(to_frame(assign_identities(records)), workdir / "data/manifests/lfw.parquet")
    params = _params(**{"folds.k": 2})
    params["datasets"]["lfw"] = {"reader": "lfw", "root": "data/raw/lfw/lfw", "role": "eval", "label_sets": {},
                                 "source": {"kind": "lfw"}, "options": {}, "expected": {}}
    params["folds"]["datasets"]["lfw"] = {"pairs": {"kind": "lfw", "file": "data/protocols/pairs.txt",
                                                    "max_unmatched_fraction": 0.5}}
    write_params(workdir / "params.yaml", params)
    res = _invoke("folds", "lfw")
    assert res.exit_code == 0, res.output
    f1 = json.loads((workdir / "data/folds/lfw/fold1.json").read_text())
    assert f1["test_subjects"] == ["C", "D"] and f1["assignment"] == "lfw_pairs"
    assert "E" in f1["train_subjects"]
    pairs = pd.read_parquet(workdir / "data/folds/lfw/fold1-pairs.parquet")
    assert len(pairs) == 0  # both pairs of fold 1 need C_0002
    p0 = pd.read_parquet(workdir / "data/folds/lfw/fold0-pairs.parquet")
    assert p0["input_id"].tolist() == ["lfw/A/A_0001", "lfw/A/A_0001"]
    assert p0["reference_id"].tolist() == ["lfw/A/A_0002", "lfw/B/B_0001"] and p0["row"].tolist() == [0, 1]
    metrics = json.loads((workdir / "metrics/folds/lfw.json").read_text())
    assert metrics["pairs_unmatched"] == 2 and metrics["images_in_no_test_fold"] == 1  # E is in no pair
    write_params(workdir / "params.yaml", {**params, "folds": {**params["folds"], "k": 3, "run": [0]}})
    assert "has 2 folds but folds.k = 3" in _error_line(_invoke("folds", "lfw"))


def test_missing_manifest_names_the_stage_to_run(workdir, no_mlflow):
    err = _error_line(_invoke("folds", "demo_oulu"))
    assert "manifest not found: data/manifests/demo_oulu.parquet" in err and "manifest@demo_oulu" in err


def test_dataset_without_fold_settings(workdir, no_mlflow):
    assert "add folds.datasets.demo_webface" in _error_line(_invoke("folds", "demo_webface"))
    assert "unknown dataset 'nope'" in _error_line(_invoke("folds", "nope"))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"folds.datasets.demo_oulu.test_subjects": {1: ["P002", "P999"]}},
     "test_subjects.1: unknown subject(s) ['P999'] (not in the manifest)"),
    ({"folds.datasets.demo_oulu.pairs.required": ["Happy", "Surprise"]},
     "folds.datasets.demo_oulu.pairs.required: unknown expression(s) ['Happy']; label set 'expression' has"),
    ({"folds.run": [0, 4]}, "folds: run: fold(s) [4] not in 0..3 (k = 4)"),
    ({"folds.k": 1}, "folds.k: Input should be greater than or equal to 2"),
    ({"folds.datasets.demo_oulu.test_subjects": {1: ["P002"], 2: ["P002"]}}, "'P002' is listed for folds 1 and 2"),
    ({"folds.datasets.demo_oulu.test_subjects": {7: ["P002"]}}, "fold index(es) [7] not in 0..3"),
    ({"folds.datasets.demo_oulu.pairs.original_files": {0: "/abs/pairs.txt"}}, "must lie under data/protocols/"),
    ({"folds.k": 13}, "would have no test subject (12 subjects for k = 13): lower folds.k"),
])
def test_bad_params_and_subjects_are_one_line(workdir, no_mlflow, overrides, message):
    _write_manifest(workdir / "data/manifests/demo_oulu.parquet", "demo_oulu", _demo_frames(12))
    write_params(workdir / "params.yaml", _params(**overrides))
    assert message in _error_line(_invoke("folds", "demo_oulu"))
    assert not (workdir / "data/folds").exists()


def test_bad_pair_file_line_is_one_line(workdir, no_mlflow):
    _fold4_setup(workdir)
    lines = (workdir / PAIR_REL).read_text().splitlines()
    lines[3] = lines[3].replace("True", "Yes", 1)
    (workdir / PAIR_REL).write_text("\n".join(lines) + "\n")
    err = _error_line(_invoke("folds", "oulu"))
    assert f"{PAIR_REL}: line 4: IdentityIssame must be True or False, got 'Yes'" in err


def test_manifest_without_first_frames_is_one_line(workdir, no_mlflow):
    frames = {key: [5, 6, 7] for key in _demo_frames(8)}  # a manifest made with keep_first: 0
    _write_manifest(workdir / "data/manifests/demo_oulu.parquet", "demo_oulu", frames)
    err = _error_line(_invoke("folds", "demo_oulu"))
    assert "fold 0: no neutral first frame (frame 0)" in err and "keep_first >= 1" in err
