"""Where the pipeline's files live, relative to the repository root: the one definition of the data layout.

``dvc.yaml`` spells the same paths for DVC; the stage commands and the checks on user paths use these. Every folder
here is written (and emptied) by the pipeline, so no user data may live inside one (:data:`GENERATED`).

Layout::

    data/raw/<d>/                       raw images (generated demo, downloaded LFW, or a link to licensed data)
    data/cache/downloads/               downloaded archives (kept across runs)
    data/manifests/<d>.parquet          one row per image (pipeline.data.manifest)
    data/aligned/<d>/                   aligned-face store (pipeline.faces)
    data/folds/<d>/fold<k>.json         fold k's subjects, and fold<k>-pairs.parquet its verification pairs
    data/pretrain/<d>/model.pt          the pretrained model fine-tuning can start from
    data/finetune/<d>/fold<k>-<method>/ one fine-tuning run (or fold<k>-pixel_pca, the pixel baseline)
    data/cari/<d>/                      a caricature dataset's split (split.json, pairs.parquet,
                                        identification.parquet) and its runs (<method>/, pixel_pca/)
    data/work/<stage>/                  resumable state of unfinished training runs (not a DVC output)
    metrics/<stage>/...                 each stage's metrics (JSON)
    reports/                            the report's tables and figures
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ALIGNED", "CARI", "DOWNLOAD_CACHE", "FINETUNE", "FOLDS", "GENERATED", "MANIFESTS", "METRICS", "PRETRAIN", "RAW",
    "REPORTS", "WORK", "cari_run", "cari_split_files", "finetune_run", "fold_files", "manifest_file",
    "pretrained_model", "run_tag",
]

RAW = Path("data/raw")
DOWNLOAD_CACHE = Path("data/cache/downloads")
MANIFESTS = Path("data/manifests")
ALIGNED = Path("data/aligned")
FOLDS = Path("data/folds")
PRETRAIN = Path("data/pretrain")
FINETUNE = Path("data/finetune")
CARI = Path("data/cari")
DISJOINT = Path("data/disjoint")
WORK = Path("data/work")
METRICS = Path("metrics")
REPORTS = Path("reports")

#: the ``check_params`` stage's output, on which every other stage depends (its content never changes)
PARAMS_CHECKED = Path("data/params-valid.txt")
#: folders whose contents DVC and the stages replace: user data there would be deleted
GENERATED = (RAW, MANIFESTS, Path("data/cache"), FOLDS, METRICS)


def manifest_file(dataset: str) -> Path:
    """The manifest of ``dataset`` (parquet, one row per image)."""
    return MANIFESTS / f"{dataset}.parquet"


def fold_files(dataset: str, fold: int) -> tuple[Path, Path]:
    """Fold ``fold`` of ``dataset``: its subjects (``fold<k>.json``) and its verification pairs (parquet)."""
    return FOLDS / dataset / f"fold{fold}.json", FOLDS / dataset / f"fold{fold}-pairs.parquet"


def pretrained_model(dataset: str) -> Path:
    """The pretrain stage's model of ``dataset``: the checkpoint of ``finetune.common.init: pretrain``."""
    return PRETRAIN / dataset / "model.pt"


def run_tag(fold: int, method: str) -> str:
    """The name of one fine-tuning run's output folder and metrics file: ``fold<k>-<method>``."""
    return f"fold{fold}-{method}"


def finetune_run(dataset: str, fold: int, method: str) -> dict[str, Path]:
    """The inputs and outputs of one fine-tuning run (``method = "pixel_pca"``: the pixel baseline), as in dvc.yaml:
    ``manifest``, ``aligned``, ``fold``, ``pairs``, ``out`` (the run's folder) and ``metrics`` (its JSON)."""
    fold_json, pairs = fold_files(dataset, fold)
    tag = run_tag(fold, method)
    return {"manifest": manifest_file(dataset), "aligned": ALIGNED / dataset, "fold": fold_json, "pairs": pairs,
            "out": FINETUNE / dataset / tag, "metrics": METRICS / "finetune" / dataset / f"{tag}.json"}


def cari_split_files(dataset: str) -> dict[str, Path]:
    """The outputs of ``cari_split@<dataset>``: ``dir`` (``data/cari/<d>/split``), ``split`` (``split.json``: classes,
    training images and labels, counts), ``pairs`` (``pairs.parquet``: the test pairs), ``identification``
    (``identification.parquet``: the labelled test images and the probe/gallery sets) and ``metrics``."""
    folder = CARI / dataset / "split"
    return {"dir": folder, "split": folder / "split.json", "pairs": folder / "pairs.parquet",
            "identification": folder / "identification.parquet", "metrics": METRICS / "cari" / dataset / "split.json"}


def cari_run(dataset: str, method: str) -> dict[str, Path]:
    """The inputs and outputs of one caricature run (``method = "pixel_pca"``: the pixel baseline): ``manifest``,
    ``aligned``, the split's files (``split``, ``pairs``, ``identification``), ``out`` (``data/cari/<d>/<method>``)
    and ``metrics`` (``metrics/cari/<d>/<method>.json``)."""
    sp = cari_split_files(dataset)
    return {"manifest": manifest_file(dataset), "aligned": ALIGNED / dataset, "split": sp["split"],
            "pairs": sp["pairs"], "identification": sp["identification"], "out": CARI / dataset / method,
            "metrics": METRICS / "cari" / dataset / f"{method}.json"}


def disjoint_run(dataset: str, fold: int, method: str) -> dict[str, Path]:
    """The inputs and outputs of one disjoint-datasets run on fold ``fold`` of ``dataset`` (view ``demo_halves``):
    ``manifest``, ``aligned``, ``fold``, ``pairs``, ``out`` (``data/disjoint/fold<k>-<method>``: model, steps,
    scores, history, curves, ``pseudo/<epoch>.parquet``, ``hidden.parquet``) and ``metrics``
    (``metrics/disjoint/fold<k>-<method>.json``)."""
    fold_json, pairs = fold_files(dataset, fold)
    tag = run_tag(fold, method)
    return {"manifest": manifest_file(dataset), "aligned": ALIGNED / dataset, "fold": fold_json, "pairs": pairs,
            "out": DISJOINT / tag, "metrics": METRICS / "disjoint" / f"{tag}.json"}
