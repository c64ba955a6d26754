"""Split data/manifests/<DATASET> into k subject-disjoint folds and write each fold's split and verification pairs.

Writes ``data/folds/<dataset>/fold<k>.json`` and ``fold<k>-pairs.parquet`` for every fold ``k`` in 0..K-1 (all of
them: they are cheap, and downstream per-fold stages depend on their own fold's files only, so ``folds.run`` is
not read here) and ``metrics/folds/<dataset>.json``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.config import StageParams
from pipeline.errors import DatasetError, UserError
from stages.common import load_stage_params, user_errors
from stages.provenance import Input
from stages.tracking import stage_run

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.folds.pairs import PairSet
    from pipeline.folds.split import Fold

#: the dataset's own label sets only (so another dataset's label-set edit does not re-run this one);
#: ``folds.run`` is deliberately absent (it selects downstream folds only)
DECLARED = ["folds.k", "folds.assignment", "folds.seed", "folds.datasets.{name}", "datasets.{name}.label_sets"]
FOLDS = layout.FOLDS
METRICS = layout.METRICS / "folds"

log = logging.getLogger("stages.folds")


def paths(name: str) -> dict[str, Path]:
    """The stage's input and outputs for dataset ``name`` (the same paths as in dvc.yaml)."""
    return {"manifest": layout.manifest_file(name), "folds": FOLDS / name, "metrics": METRICS / f"{name}.json"}


@dataclass
class _Result:
    """Folds, their pair sets and how the split was made."""

    folds: list[Fold]
    pair_sets: list[PairSet]
    assignment: str
    excluded: list[str] = field(default_factory=list)
    pair_sources: list[str] = field(default_factory=list)


@user_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name (a key of `folds.datasets`).")],
) -> None:
    from pipeline.data.manifest import read_manifest

    sp = load_stage_params(ctx, [s.format(name=name) for s in DECLARED])
    try:
        sp.get(f"folds.datasets.{name}")
    except KeyError:
        raise UserError(f"dataset {name!r} has no fold settings: add folds.datasets.{name} to params.yaml") from None
    out = paths(name)
    if not out["manifest"].is_file():
        raise DatasetError(f"manifest not found: {out['manifest']}; run the manifest stage first "
                           f"(`dvc repro manifest@{name}` or `python -m stages manifest {name}`)")
    manifest = read_manifest(out["manifest"])
    with stage_run("folds", sp, item=name,
                   inputs=[Input(str(out["manifest"]), dataset=name), Input("data/protocols")]) as run:
        result = _make(sp, name, manifest)
        metrics = _metrics(sp, name, manifest, result)
        with atomic_files(out["metrics"]) as (tmp_metrics,), atomic_dir(out["folds"]) as tmp:
            for fold, pairs in zip(result.folds, result.pair_sets, strict=True):
                fold_json, pairs_file = layout.fold_files(name, fold.index)
                write_json(_fold_json(sp, name, fold, result), tmp / fold_json.name)
                pairs.pairs.to_parquet(tmp / pairs_file.name, index=False)
            write_json(metrics, tmp_metrics)
        for key, fold in metrics["per_fold"].items():
            per_fold = {f"fold_{k}": v for k, v in fold.items() if isinstance(v, int) and k != "fold"}
            run.log_metrics(per_fold, step=int(key.removeprefix("fold")))  # one series per quantity, step = fold
        run.log_metrics({k: metrics[k] for k in ("subjects", "images", "pairs", "pairs_skipped", "pairs_unmatched")})
        run.log_dict(metrics, "folds.json")
    typer.echo(f"{name}: {len(result.folds)} folds over {metrics['subjects']} subjects, {metrics['pairs']} pairs "
               f"({metrics['pairs_skipped']} combinations skipped, {metrics['pairs_unmatched']} pair-file lines "
               f"unmatched) -> {out['folds']}")


def _make(sp: StageParams, name: str, manifest: pd.DataFrame) -> _Result:
    """Build and check the folds, then the pairs of each fold."""
    from pipeline.folds.split import build_folds, check_folds, folds_from_subject_lists

    k, assignment, seed = sp.get("folds.k"), sp.get("folds.assignment"), sp.get("folds.seed")
    cfg = sp.get(f"folds.datasets.{name}")
    if cfg.pairs.kind == "lfw":
        from pipeline.data.readers.lfw import read_lfw_pairs
        from pipeline.folds.lfw import lfw_fold_pairs, lfw_test_subjects

        lfw = _read(read_lfw_pairs, cfg.pairs.file)
        if lfw.n_folds != k:
            raise UserError(f"{cfg.pairs.file} has {lfw.n_folds} folds but folds.k = {k}: set folds.k to "
                            f"{lfw.n_folds} (or give {name} its own params file)")
        tests = lfw_test_subjects(lfw, set(manifest["subject"].astype(str)))
        folds = folds_from_subject_lists(manifest, tests)
        check_folds(folds, manifest, require_cover=False)  # people in no pair are in no test fold
        pair_sets = [lfw_fold_pairs(lfw, manifest, f) for f in range(k)]
        _check_unmatched(pair_sets, cfg.pairs.max_unmatched_fraction, cfg.pairs.file)
        return _Result(folds, pair_sets, "lfw_pairs", pair_sources=[f"lfw:{cfg.pairs.file}"] * k)
    folds = build_folds(manifest, k, assignment=assignment, seed=seed, explicit=cfg.test_subjects,
                        exclude=cfg.exclude_subjects)
    pair_sets, sources = [], []
    for fold in folds:
        pairs, source = _fold_pairs(sp, name, manifest, fold, seed)
        pair_sets.append(pairs)
        sources.append(source)
    return _Result(folds, pair_sets, assignment, sorted(cfg.exclude_subjects), sources)


def _fold_pairs(sp: StageParams, name: str, manifest: pd.DataFrame, fold: Fold, seed: int) -> tuple[PairSet, str]:
    """The pairs of one fold: none, an original pair file, or the seeded recipe."""
    from pipeline.folds.pair_file import map_original_pairs, read_pair_file
    from pipeline.folds.pairs import PairSet, empty_pairs, expression_pairs

    cfg = sp.get(f"folds.datasets.{name}").pairs
    if cfg.kind == "none":
        return PairSet(empty_pairs()), "none"
    label_set = sp.get(f"datasets.{name}.label_sets")[cfg.label_set]
    file = cfg.original_files.get(fold.index)
    if file is None:
        pairs = _wrap(lambda: expression_pairs(manifest, label_set, fold.test_subjects, cfg.required,
                                               [seed, fold.index]), f"fold {fold.index}")
        return pairs, "recipe"
    lines = _read(read_pair_file, file)
    pairs = _wrap(lambda: map_original_pairs(lines, manifest, label_set.classes, prefix=cfg.prefix), file)
    _check_unmatched([pairs], cfg.max_unmatched_fraction, file)
    subject_of = dict(zip(manifest["image_id"].astype(str), manifest["subject"].astype(str), strict=True))
    used = {subject_of[i] for col in ("input_id", "reference_id") for i in pairs.pairs[col]}
    outside = sorted(used - set(fold.test_subjects))
    if outside:
        raise UserError(f"{file}: pairs use subject(s) {outside} that are not test subjects of fold {fold.index} "
                        f"({list(fold.test_subjects)}): set folds.datasets.{name}.test_subjects.{fold.index}")
    return pairs, f"file:{file}"


def _read(reader: Callable[[Path], Any], path: str) -> Any:
    """Run a pair-file reader; a missing file or a format error becomes one clear line."""
    if not Path(path).is_file():
        raise UserError(f"pair file not found: {path}")
    return _wrap(lambda: reader(Path(path)), path)


def _wrap(fn: Callable[[], Any], path: str) -> Any:
    """Call ``fn``; a ``ValueError`` becomes a :class:`UserError` that names ``path``."""
    try:
        return fn()
    except ValueError as exc:
        text = str(exc)
        raise UserError(text if text.startswith(str(path)) else f"{path}: {text}") from None


def _check_unmatched(pair_sets: list[PairSet], max_fraction: float, file: str) -> None:
    """Fail when all, or more than ``max_fraction``, of a pair file's lines did not map to manifest images."""
    unmatched = [u for p in pair_sets for u in p.unmatched]
    total = sum(len(p.pairs) for p in pair_sets) + len(unmatched)
    if not unmatched:
        return
    fraction = len(unmatched) / total
    if len(unmatched) == total or fraction > max_fraction:
        row, reason = unmatched[0]
        raise UserError(f"{file}: {len(unmatched)} of {total} pairs do not map to manifest images ({fraction:.1%} > "
                        f"max_unmatched_fraction={max_fraction}); first: row {row}: {reason}")
    log.warning("%s: %d of %d pairs skipped (first: row %d: %s)", file, len(unmatched), total, *unmatched[0])


def _fold_json(sp: StageParams, name: str, fold: Fold, result: _Result) -> dict[str, Any]:
    """The content of ``fold<k>.json``."""
    return {
        "dataset": name,
        "fold": fold.index,
        "k": sp.get("folds.k"),
        "seed": sp.get("folds.seed"),
        "assignment": result.assignment,
        "pairs": result.pair_sources[fold.index],
        "excluded_subjects": result.excluded,
        "test_subjects": list(fold.test_subjects),
        "train_subjects": list(fold.train_subjects),
        "test_image_ids": list(fold.test_image_ids),
        "train_image_ids": list(fold.train_image_ids),
    }


def _metrics(sp: StageParams, name: str, manifest: pd.DataFrame, result: _Result) -> dict[str, Any]:
    """``metrics/folds/<name>.json``: sizes per fold, pairs per type, skipped combinations and unmatched lines."""
    skipped: Counter[str] = Counter()
    unmatched: Counter[str] = Counter()
    per_fold = {}
    for fold, ps in zip(result.folds, result.pair_sets, strict=True):
        skipped.update(ps.skipped)
        for _, reason in ps.unmatched:
            unmatched[reason.split(":")[0]] += 1
        per_fold[f"fold{fold.index}"] = {
            "fold": fold.index, "test_subjects": len(fold.test_subjects), "train_subjects": len(fold.train_subjects),
            "test_images": len(fold.test_image_ids), "train_images": len(fold.train_image_ids),
            "pairs": len(ps.pairs), "pairs_same": int(ps.pairs["is_same"].sum()),
            "pairs_by_type": ps.counts_by_type(), "pairs_skipped": sum(ps.skipped.values()),
            "pairs_unmatched": len(ps.unmatched),
        }
    covered = sum(len(f.test_image_ids) for f in result.folds)
    return {
        "dataset": name,
        "k": sp.get("folds.k"),
        "assignment": result.assignment,
        "subjects": int(manifest["subject"].nunique()),
        "images": len(manifest),
        "excluded_subjects": len(result.excluded),
        "images_in_no_test_fold": len(manifest) - covered,
        "pairs": sum(len(p.pairs) for p in result.pair_sets),
        "pairs_skipped": sum(skipped.values()),
        "pairs_skipped_by_reason": dict(sorted(skipped.items())),
        "pairs_unmatched": sum(unmatched.values()),
        "pairs_unmatched_by_reason": dict(sorted(unmatched.items())),
        "per_fold": per_fold,
    }
