"""`python -m stages verify`: JSON and table output, agreement with the facenet reference, and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.evaluation import evaluate_verification
from stages.app import app
from tests.test_evaluation import make_case, reference_cases

runner = CliRunner()


def _save(tmp_path, a, b, same) -> list[str]:
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "s.npy", same)
    return ["verify", "--embeddings-a", str(tmp_path / "a.npy"), "--embeddings-b", str(tmp_path / "b.npy"),
            "--same", str(tmp_path / "s.npy")]


def _pairs(n=500, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    a = rng.standard_normal((n, dim)).astype(np.float32)
    b = np.where(same[:, None], a + 1.2 * rng.standard_normal((n, dim)), rng.standard_normal((n, dim)))
    return a, b.astype(np.float32), same


def test_json_output_has_the_documented_keys(tmp_path):
    a, b, same = _pairs()
    res = runner.invoke(app, [*_save(tmp_path, a, b, same), "--json", "--far", "0.001", "--far", "0.01",
                              "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"accuracy", "accuracy_std", "threshold", "auc", "eer", "val_at_far"} <= set(out)
    assert set(out["val_at_far"]) == {"0.001", "0.01"}
    assert {"val", "val_std", "far"} <= set(out["val_at_far"]["0.01"])
    assert out["mode"] == "clean" and out["n_pairs"] == 500 and out["seed"] == 0
    lib = evaluate_verification(a, b, same).to_dict()
    assert out == lib
    assert json.loads((tmp_path / "r.json").read_text()) == lib
    # 1/(different pairs in the training folds) is about 1/225 > 0.001: not measurable, not 0
    assert out["val_at_far"]["0.001"]["val"] is None and out["val_at_far"]["0.001"]["measurable"] is False
    assert out["val_at_far"]["0.01"]["val"] > 0.5


def test_table_output_and_options(tmp_path):
    a, b, same = _pairs(seed=1)
    args = _save(tmp_path, a, b, same)
    res = runner.invoke(app, [*args, "--far", "0.0001", "--far", "0.05", "--folds", "5", "--mode", "faithful"])
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert "500 given, 500 used" in text and "5 folds, faithful mode (contiguous folds)" in text
    assert "accuracy" in text and "AUC" in text and "EER" in text
    assert "VAL@0.0001 not measurable: FAR floor" in text and "VAL@0.05" in text
    res = runner.invoke(app, [*args, "--json", "--seed", "3", "--no-shuffle"])
    out = json.loads(res.stdout)
    assert out["shuffled"] is False and out["seed"] is None and out["n_folds"] == 10


def test_matches_the_facenet_reference(tmp_path):
    """The command, in faithful mode on already-normalised embeddings, gives facenet 1.0.5's own numbers."""
    case = next(c for c in reference_cases() if c["name"] == "gauss_lfw_6000")
    a, b, same = make_case(**case)
    res = runner.invoke(app, [*_save(tmp_path, a, b, same), "--mode", "faithful", "--no-normalize", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["accuracy"] == pytest.approx(case["roc"]["accuracy_mean"], abs=1e-15)
    assert out["accuracy_std"] == pytest.approx(case["roc"]["accuracy_std"], abs=1e-15)
    assert out["fold_threshold"] == case["roc"]["best_threshold"]
    for key in ("0.001", "0.01"):
        ref = case["val"][key]
        got = out["val_at_far"][key]
        assert got["measurable"] and got["val"] == pytest.approx(ref["val_mean"], abs=1e-15)
        assert got["val_std"] == pytest.approx(ref["val_std"], abs=1e-15)
        assert got["far"] == pytest.approx(ref["far_mean"], abs=1e-15)
    # with normalisation (the default) the unit-norm inputs give the same numbers up to rounding
    res = runner.invoke(app, [*_save(tmp_path, a, b, same), "--mode", "faithful", "--json"])
    assert json.loads(res.stdout)["accuracy"] == pytest.approx(out["accuracy"], abs=1e-3)


def _bad(tmp_path, a, b, same, *extra):
    res = runner.invoke(app, [*_save(tmp_path, a, b, same), *extra])
    return res


@pytest.mark.parametrize("what", [
    "missing", "shape", "same_length", "same_int", "same_2d", "nan", "zero_row", "few_pairs", "faithful_few",
    "one_class", "one_d", "pickled", "npz", "bad_far", "unwritable_out", "out_in_missing_folder_of_a_file",
])
def test_bad_inputs_are_one_clear_line(tmp_path, what):
    a, b, same = _pairs(n=60)
    extra: list[str] = []
    expect = {
        "missing": "embeddings B file not found", "shape": "differ in shape", "same_length": "one per pair",
        "same_int": "must be a boolean array (dtype bool), got dtype int64", "same_2d": "1-D array of 60",
        "nan": "embeddings A has NaN or inf in 1 row(s), first row 7", "zero_row": "all-zero row",
        "few_pairs": "8 pairs are fewer than the 10 folds", "faithful_few": "faithful mode keeps 0 of 40",
        "one_class": "verification needs both classes", "one_d": "N x D arrays", "pickled": "cannot read same",
        "npz": "holds several arrays", "bad_far": "FAR targets must be in (0, 1]",
        "unwritable_out": "--out /proc/x.json: cannot write the result: ",
        "out_in_missing_folder_of_a_file": "/file/r.json: cannot write the result: ",
    }[what]
    if what == "shape":
        b = b[:, :8]
    elif what == "same_length":
        same = same[:59]
    elif what == "same_int":
        same = same.astype(np.int64)
    elif what == "same_2d":
        same = same[:, None]
    elif what == "nan":
        a[7, 2] = np.nan
    elif what == "zero_row":
        b[4] = 0
    elif what == "few_pairs":
        a, b, same = a[:8], b[:8], same[:8]
    elif what == "faithful_few":
        a, b, same = a[:40], b[:40], same[:40]
        extra = ["--mode", "faithful"]
    elif what == "one_class":
        same = np.ones(60, dtype=bool)
    elif what == "one_d":
        a, b = a[:, 0], b[:, 0]
    elif what == "bad_far":
        extra = ["--far", "1.5"]
    elif what == "unwritable_out":
        extra = ["--out", "/proc/x.json"]
    elif what == "out_in_missing_folder_of_a_file":
        (tmp_path / "file").write_text("")
        extra = ["--out", str(tmp_path / "file" / "r.json")]
    args = _save(tmp_path, a, b, same)
    if what == "missing":
        (tmp_path / "b.npy").unlink()
    elif what == "pickled":
        np.save(tmp_path / "s.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif what == "npz":
        np.savez(tmp_path / "s.npz", same=same)
        args[-1] = str(tmp_path / "s.npz")
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert expect in err and "Traceback" not in res.output
    assert res.stdout == ""
