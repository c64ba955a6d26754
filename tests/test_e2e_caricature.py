"""End to end on the caricature datasets' real layouts: "real data is a params edit".

A scratch copy of the repository (``tests/conftest.py`` ``copy_repo``: the code, ``dvc.yaml``, no generated data)
whose only edit is ``params.yaml``: two licensed datasets, ``cavi`` and ``webcari``, at tiny CaVI- and
WebCaricature-layout folders outside the repository (``tests/fixtures_layouts.py``: the real folder trees, CaVINet's
pair file beside ``CaVI_Dataset`` as in the real download, WebCaricature's ``EvaluationProtocols``), with
``cari.datasets: [cavi, webcari]`` and short runs. ``dvc repro cari_report`` runs the caricature chain for both, the
report shows Table I for CaVI and Tables II-IV for WebCaricature with the paper's numbers under a real-data (not
demo) header, and a second ``dvc repro cari_report`` has nothing to do.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests import fixtures_layouts as fx
from tests.conftest import run_checked, set_dotted, tiny_params

pytestmark = pytest.mark.e2e

DATASETS = ["cavi", "webcari"]
METHODS = ["dynamic"]

# --- CaVI: 4 identities, 3 caricatures and 3 photos each; images 0 and 1 are in the kept pairs, 2 trains ------------

CAVI_FOLDERS = {
    "Caricature": {"Aamir_Khan": 3, "Akhilesh_yadav": 3, "George_Bush": 3, "Ted_Cruz": 3},
    "Real": {"Aamir_Khan": 3, "akhilesh_yadav": 3, "George_Bush": 3, "Ted_Cruz": 3},  # one identity, two spellings
}
#: the pair file's down-sampling (protocol.downsample): lines 0, 2, 4, ... are kept
CAVI_DOWNSAMPLE = 2


def _c(folder: str, k: int) -> fx.CaviRef:
    return (folder, folder, f"{folder}_c_{k}.jpg")


def _r(folder: str, k: int) -> fx.CaviRef:
    return (folder, folder, f"{folder}_r_{k}.jpg")


CAVI_KEPT = [
    fx.cavi_pair_line(_c("Aamir_Khan", 0), _r("Aamir_Khan", 0), 1),
    fx.cavi_pair_line(_c("Akhilesh_yadav", 0), _r("akhilesh_yadav", 0), 1),
    fx.cavi_pair_line(_c("Aamir_Khan", 1), _r("George_Bush", 1), 0),
    fx.cavi_pair_line(_c("George_Bush", 0), _r("George_Bush", 0), 1),
    fx.cavi_pair_line(_c("Akhilesh_yadav", 1), _r("Ted_Cruz", 1), 0),
    fx.cavi_pair_line(_c("Ted_Cruz", 0), _r("Ted_Cruz", 0), 1),
    fx.cavi_pair_line(_c("George_Bush", 1), _r("Aamir_Khan", 1), 0),
    fx.cavi_pair_line(_c("Ted_Cruz", 1), _r("akhilesh_yadav", 1), 0),
]
#: the lines the down-sampling drops (they name training images)
CAVI_FILLER = [fx.cavi_pair_line(_c("Aamir_Khan", 2), _r("Aamir_Khan", 2), 1)]

# --- WebCaricature: 4 identities, 3 caricatures and 3 photos each; 1 and 2 train, 3 are tested ---------------------

ADELE, JEFF, GAGA, HANKS = "Adele Laurie Blue Adkins", "Jeff Bridges", "Lady Gaga", "Tom Hanks"
PEOPLE = (ADELE, JEFF, GAGA, HANKS)
WEB_SUBJECTS = {p: (3, 3) for p in PEOPLE}
WEB_TRAIN = [*((p, f"C0000{k}", f"P0000{k}") for p in PEOPLE for k in (1, 2)), (ADELE, "C00001", JEFF, "P00002"),
             (GAGA, "C00002", HANKS, "P00001")]
WEB_TEST = [*((p, "C00003", "P00003") for p in PEOPLE),
            *((a, "C00003", b, "P00003") for a, b in zip(PEOPLE, PEOPLE[1:] + PEOPLE[:1], strict=True))]
WEB_IDENT = {"C2P": ([(p, "C00003") for p in PEOPLE], [(p, "P00003") for p in PEOPLE]),
             "P2C": ([(p, "P00003") for p in PEOPLE], [(p, "C00003") for p in PEOPLE])}

#: the stages `dvc repro cari_report` runs: the params check, the two datasets' chains, the caricature stages
CARI_STAGES = {"check_params",
               *(f"{s}@{d}" for d in DATASETS for s in ("download", "manifest", "align", "cari_split", "cari_pixel")),
               *(f"cari_train@{d}-{m}" for d in DATASETS for m in METHODS), "cari_report"}


def build_licensed(base: Path) -> dict[str, Path]:
    """The two datasets as a user unpacks them, outside the repository: CaVINet's ``CaVI_Dataset`` with its
    ``train-test-files/testing_1.txt`` beside it, and the ``WebCaricature`` folder with its protocol files."""
    cavi = fx.build_cavi(base / "CaVINet", CAVI_FOLDERS)
    fx.write_cavi_pair_file(base / "CaVINet/train-test-files/testing_1.txt", CAVI_KEPT, CAVI_FILLER,
                            downsample=CAVI_DOWNSAMPLE)
    web = fx.build_webcaricature(base, WEB_SUBJECTS)
    fx.write_webcari_protocol(web, WEB_TRAIN, WEB_TEST, WEB_IDENT)
    return {"cavi": cavi, "webcari": web}


def cari_params(roots: dict[str, Path]) -> dict:
    """The repository's params.yaml (its demo datasets shrunk, ``tiny_params``) with the user's edit: the two
    datasets, as docs/caricature.md writes them, and ``cari.datasets``; short runs of one method."""
    licensed = {"kind": "licensed"}
    params = tiny_params()
    params["datasets"].update({
        "cavi": {"reader": "cavi", "root": str(roots["cavi"]), "role": "caricature", "align_convention": "resize_only",
                 "source": licensed, "options": {}, "expected": {}, "label_sets": {},
                 "protocol": {"kind": "cavi", "pairs": "../train-test-files/testing_1.txt",
                              "downsample": CAVI_DOWNSAMPLE}},
        "webcari": {"reader": "webcaricature", "root": str(roots["webcari"]), "role": "caricature",
                    "align_convention": "landmarks_box", "source": licensed, "options": {}, "expected": {},
                    "label_sets": {},
                    "protocol": {"kind": "webcaricature", "folder": "EvaluationProtocols",
                                 "train_pairs": "FaceVerification/Restricted/RestrictedView1_DevTrain.txt",
                                 "test_pairs": "FaceVerification/Restricted/RestrictedView1_DevTest.txt",
                                 "identification": "FaceIdentification"}},
    })
    return set_dotted(params, {
        "cari.datasets": DATASETS, "cari.run_methods": METHODS, "cari.common.init": "random",
        "cari.common.epochs": 1, "cari.common.epoch_size": 1, "cari.common.batch_size": 8,
        "cari.common.network.input_size": 80,
        "cari.common.protocol.n_folds": 2,  # 8 test pairs on each dataset
        "finetune.runtime.threads": 1, "finetune.runtime.eval_batch_size": 32, "folds.k": 3,
    })


def _dvc(repo: dict, *args: str, check: bool = True):
    return run_checked([sys.executable, "-m", "dvc", *args], repo["dst"], repo["env"], check)


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def cari_repo(tmp_path_factory) -> dict:
    from tests.conftest import copy_repo

    base = tmp_path_factory.mktemp("e2e_cari")
    roots = build_licensed(base / "licensed")
    dst = base / "repo"
    env = copy_repo(dst, cari_params(roots))
    env["DMTL_MLFLOW"] = "0"
    repo = {"dst": dst, "env": env, "roots": roots}
    repo["out"] = _dvc(repo, "repro", "cari_report").stdout
    return repo


def test_real_caricature_data_is_a_params_edit(cari_repo):
    dst = cari_repo["dst"]
    assert _ran(cari_repo["out"]) == CARI_STAGES, cari_repo["out"]
    lock = json.loads(json.dumps(__import__("yaml").safe_load((dst / "dvc.lock").read_text())))
    assert set(lock["stages"]) == CARI_STAGES

    table = (dst / "reports/cari_tables.md").read_text()
    cavi, web = table.split("# Caricature-visual recognition: `webcari`")
    assert cavi.startswith("# Caricature-visual recognition: `cavi` (CaVI protocol)")
    assert "**Data: CaVI** (`cavi`, the CaVI protocol)" in cavi and "**Data: WebCaricature** (`webcari`" in web
    assert "demo numbers" not in table and "embedded caricature demo" not in table
    assert "## Table I: CaVI accuracy (%)" in cavi and "Table II" not in cavi
    assert "94.92" in cavi  # Ours (Multi-task)'s Cari-Visual in the paper's Table I
    assert "## Table II: WebCaricature verification" in web and "Table I:" not in web
    assert "45.82 ± 1.65" in web  # Ours (Multi-task)'s VAL at FAR 0.1 % in the paper's Table II
    assert "Table III" in web and "Table IV" in web
    for d in DATASETS:
        metrics = json.loads((dst / f"metrics/cari/{d}/dynamic.json").read_text())
        assert metrics["last"]["verification_accuracy"] is not None, d
    web_metrics = json.loads((dst / "metrics/cari/webcari/dynamic.json").read_text())["last"]
    assert set(web_metrics["identification"]["directions"]) == {"C2P", "P2C"}
    checks = (dst / "reports/cari_demo_check.txt").read_text()
    assert checks == "no demo targets: cavi is not demo data\nno demo targets: webcari is not demo data\n"

    again = _dvc(cari_repo, "repro", "cari_report").stdout
    assert _ran(again) == set() and "Data and pipelines are up to date" in again, again
