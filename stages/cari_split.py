"""Split a caricature dataset by its protocol: training images and labels, test pairs, identification sets.

Reads ``data/manifests/<DATASET>.parquet`` and the protocol files of ``datasets.<d>.protocol`` (docs/method.md §5.7,
§5.8, §9.28), maps the protocol's image paths to manifest ids, and writes ``data/cari/<d>/split/``:

- ``split.json``: ``classes`` (label order), the training images and labels, the number of training identities,
  the test images and labels (-1: not a class), and the counts;
- ``pairs.parquet``: the test pairs (``input_id`` caricature, ``reference_id`` photo, ``is_same``, ``block``,
  ``line`` of the pair file);
- ``identification.parquet``: WebCaricature's probe and gallery sets (``group`` C2P1…P2C10, ``direction``, ``k``,
  ``role``, ``image_id``, ``label``); no rows for CaVI;

and ``metrics/cari/<d>/split.json`` (the counts and the protocol entries skipped).

CaVI: every ``downsample``-th pair of CaVINet's pair file is kept; the training set is the other images of the kept
pairs' identities (closed-set, checked image by image). WebCaricature: training = the training pairs' images,
test = the test pairs, identification = the ``FaceIdentification/{C2P,P2C}/FR_{Probe,Gallery}_*{k}.txt`` files.
A protocol path is relative to ``datasets.<d>.root`` (WebCaricature's files: to its ``protocol.folder``), or starts
with ``data/protocols/`` (a file committed in this repository), or is absolute. Protocol entries whose images are
not in the manifest are skipped and counted; the stage fails when more than ``manifest.max_skip_fraction`` of them
are.
"""

from __future__ import annotations

import logging
import os
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

    from pipeline.folds.cari import CaviSplit, WebCariProtocol

#: the dataset's protocol and root (where relative protocol paths start), and the skip limit the manifest shares;
#: ``{item}``: the dataset (dvc.yaml's ``${item}``: the stage is a foreach over the list ``cari.datasets``)
DECLARED = ["datasets.{item}.protocol", "datasets.{item}.root", "manifest.max_skip_fraction"]
#: repo-relative protocol files (committed by the user, e.g. CaVINet's testing_1.txt)
PROTOCOLS = Path("data/protocols")
#: WebCaricature's image folder: the protocol's ``<id>/<name>.jpg`` paths are relative to it
WEBCARI_IMAGES = "OriginalImages"
#: the columns of ``pairs.parquet`` and ``identification.parquet`` and their dtypes (identical for every dataset,
#: with or without rows)
PAIR_DTYPES = {"input_id": "string", "reference_id": "string", "is_same": "bool", "block": "int64", "line": "int64"}
IDENTIFICATION_DTYPES = {"group": "string", "direction": "string", "k": "int64", "role": "string",
                         "image_id": "string", "label": "int64"}

log = logging.getLogger("stages.cari_split")


def paths(name: str) -> dict[str, Path]:
    """The stage's manifest input and outputs for dataset ``name`` (the same paths as in dvc.yaml)."""
    return {"manifest": layout.manifest_file(name), **layout.cari_split_files(name)}


@dataclass
class _Split:
    """Everything the stage writes, before it is written."""

    protocol: str
    classes: list[str]
    train_ids: list[str]
    train_labels: list[int]
    n_train_ids: int
    test_ids: list[str]
    test_labels: list[int]
    pairs: pd.DataFrame
    identification: pd.DataFrame
    counts: dict[str, int]
    skipped: list[str] = field(default_factory=list)

    def split_json(self, name: str) -> dict[str, Any]:
        return {"dataset": name, "protocol": self.protocol, "classes": self.classes,
                "train_image_ids": self.train_ids, "train_labels": self.train_labels, "train_ids": self.n_train_ids,
                "test_image_ids": self.test_ids, "test_labels": self.test_labels, "counts": self.counts}

    def metrics(self, name: str) -> dict[str, Any]:
        return {"dataset": name, "protocol": self.protocol, **self.counts, "skipped_entries": self.skipped}


@user_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name (one of `cari.datasets`).")],
) -> None:
    from pipeline.data.manifest import read_manifest

    sp = load_stage_params(ctx, [s.format(item=name) for s in DECLARED])
    protocol = sp.get(f"datasets.{name}.protocol")
    if protocol is None:
        raise UserError(f"dataset {name!r} has no caricature protocol: add datasets.{name}.protocol to params.yaml")
    files = protocol_files(sp, name)
    out = paths(name)
    if not out["manifest"].is_file():
        raise DatasetError(f"manifest not found: {out['manifest']}; run the manifest stage first "
                           f"(`dvc repro manifest@{name}` or `python -m stages manifest {name}`)")
    manifest = read_manifest(out["manifest"])
    inputs = [Input(str(out["manifest"]), dataset=name), *(Input(str(p)) for p in _flat(files))]
    with stage_run("cari_split", sp, item=name, inputs=inputs) as run:
        limit = sp.get("manifest.max_skip_fraction")
        split = (_cavi(protocol.downsample, files["pairs"], manifest, limit) if protocol.kind == "cavi"
                 else _webcari(files, manifest, limit))
        with atomic_files(out["metrics"]) as (tmp_metrics,), atomic_dir(out["dir"]) as tmp:
            write_json(split.split_json(name), tmp / out["split"].name)
            split.pairs.to_parquet(tmp / out["pairs"].name, index=False)
            split.identification.to_parquet(tmp / out["identification"].name, index=False)
            write_json(split.metrics(name), tmp_metrics)
        run.log_metrics({k: float(v) for k, v in split.counts.items()})
        run.log_artifact(out["split"])
    c = split.counts
    typer.echo(f"{name}: {len(split.train_ids)} training images of {len(split.classes)} classes, {len(split.pairs)} "
               f"test pairs, {len(split.test_ids)} test images, {len(split.identification)} identification rows "
               f"({c['skipped']} protocol entries skipped) -> {out['dir']}")


# --- protocol files --------------------------------------------------------------------------------------------------


def protocol_path(value: str, base: str | Path) -> Path:
    """Where a protocol path of params points: absolute as is; ``data/protocols/…`` relative to the repository;
    anything else relative to ``base``: the dataset's ``root`` (``..`` allowed: CaVINet's ``train-test-files`` sits
    beside ``CaVI_Dataset``), or for WebCaricature's files its ``protocol.folder``. Normalised, symlinks kept."""
    path = Path(value)
    if path.is_absolute() or path.parts[:2] == PROTOCOLS.parts:
        return Path(os.path.normpath(path))
    return Path(os.path.normpath(Path(base) / path))


def _where(key: str, value: str, base_key: str, base: str | Path) -> str:
    """How the param ``key`` = ``value`` was resolved (against ``base_key`` = ``base`` when relative), for an error
    message."""
    path = Path(value)
    if path.is_absolute():
        how = "an absolute path"
    elif path.parts[:2] == PROTOCOLS.parts:
        how = "relative to the repository (it starts with data/protocols/)"
    else:
        how = f"relative to {base_key} = {base}"
    return (f"{key} = {value!r}, {how}; a protocol path is relative to the dataset's root (WebCaricature's files: "
            "to protocol.folder), starts with data/protocols/ (a file committed in this repository), or is absolute")


def protocol_files(sp: StageParams, name: str) -> dict[str, Any]:
    """The protocol's files, checked to exist: CaVI ``{"pairs": path}``; WebCaricature ``{"train_pairs": path,
    "test_pairs": path, "identification": {(direction, k): (probe path, gallery path)}}``.

    Raises:
        UserError: a file or folder is missing; the message names it, its param and how the param was resolved.
    """
    from pipeline.folds.cari import DIRECTIONS, SPLITS, identification_files

    cfg = sp.get(f"datasets.{name}.protocol")
    key = f"datasets.{name}.protocol"
    base_key, base = f"datasets.{name}.root", str(sp.get(f"datasets.{name}.root"))
    if cfg.kind == "webcaricature":
        folder = protocol_path(cfg.folder, base)
        if not folder.is_dir():
            where = _where(f"{key}.folder", cfg.folder, base_key, base)
            raise UserError(f"protocol folder not found: {folder} ({where})")
        base_key, base = f"{key}.folder", folder
    keys = ("pairs",) if cfg.kind == "cavi" else ("train_pairs", "test_pairs")
    out: dict[str, Any] = {}
    for k in keys:
        value = getattr(cfg, k)
        path = protocol_path(value, base)
        if not path.is_file():
            raise UserError(f"protocol file not found: {path} ({_where(f'{key}.{k}', value, base_key, base)})")
        out[k] = path
    if cfg.kind == "webcaricature":
        folder = protocol_path(cfg.identification, base)
        where = _where(f"{key}.identification", cfg.identification, base_key, base)
        if not folder.is_dir():
            raise UserError(f"protocol folder not found: {folder} ({where})")
        out["identification"] = {}
        for direction in DIRECTIONS:
            for k in SPLITS:
                found = tuple(folder / direction / f for f in identification_files(direction, k))
                for f in found:
                    if not f.is_file():
                        raise UserError(f"protocol file not found: {f} (expected <identification>/{direction}/"
                                        f"{f.name} for every k in 1..10; {where})")
                out["identification"][(direction, k)] = found
    return out


def _flat(files: dict[str, Any]) -> list[Path]:
    """Every protocol file, in a stable order (the provenance inputs)."""
    out = [v for k, v in files.items() if k != "identification"]
    for pair in files.get("identification", {}).values():
        out.extend(pair)
    return out


def _parse(fn: Callable[[], Any]) -> Any:
    """Call a protocol parser; its ``ValueError`` (which names the file and line) becomes a :class:`UserError`."""
    try:
        return fn()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_skips(what: str, skipped: int, total: int, limit: float, first: str | None) -> None:
    """Fail when more than ``limit`` of ``total`` protocol entries were skipped (``what``: the entries and why,
    e.g. ``kept pairs of <file> have an image that is not in the manifest``)."""
    if skipped and skipped / total > limit:
        raise DatasetError(f"{skipped} of {total} {what} ({skipped / total:.1%} > manifest.max_skip_fraction="
                           f"{limit}); first: {first}")
    if skipped:
        log.warning("%d of %d %s (skipped); first: %s", skipped, total, what, first)


def _string_frame(rows: list[dict[str, Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=list(dtypes)).astype(dtypes)


# --- CaVI ------------------------------------------------------------------------------------------------------------


def _cavi(downsample: int, pairs_file: Path, manifest: pd.DataFrame, limit: float) -> _Split:
    """CaVI's closed-set split (:func:`pipeline.folds.cari.cavi_split`) in manifest ids."""
    from pipeline.folds.cari import cavi_split, read_cavi_pairs

    lines = _parse(lambda: read_cavi_pairs(pairs_file))
    images = dict(zip(manifest["path"].astype(str), manifest["subject"].astype(str), strict=True))
    split: CaviSplit = _parse(lambda: _named(pairs_file, lambda: cavi_split(lines, images, downsample=downsample)))
    skipped = [f"line {line}: {reason}" for line, reason in split.skipped]
    _check_skips(f"kept pairs of {pairs_file} have an image that is not in the manifest", len(split.skipped),
                 len(split.pairs) + len(split.skipped), limit, f"{pairs_file}: {skipped[0]}" if skipped else None)
    id_of = dict(zip(manifest["path"].astype(str), manifest["image_id"].astype(str), strict=True))
    test = [*zip(split.test_photos.paths, split.test_photos.labels, strict=True),
            *zip(split.test_caricatures.paths, split.test_caricatures.labels, strict=True),
            *((p, -1) for p in split.unlabelled)]
    pairs = _string_frame([{"input_id": id_of[p.caricature], "reference_id": id_of[p.photo], "is_same": p.is_same,
                            "block": 0, "line": p.line} for p in split.pairs], PAIR_DTYPES)
    counts = {**split.counts(), "skipped": len(split.skipped), "test_images": len(test)}
    return _Split("cavi", list(split.classes), [id_of[p] for p in split.train.paths], list(split.train.labels),
                  len(split.classes), [id_of[p] for p, _ in test], [int(label) for _, label in test], pairs,
                  _string_frame([], IDENTIFICATION_DTYPES), counts, skipped)


def _named(source: Path, fn: Callable[[], Any]) -> Any:
    """``fn()``, its ``ValueError`` prefixed with ``source`` (the split's own messages do not name the file)."""
    try:
        return fn()
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


# --- WebCaricature ---------------------------------------------------------------------------------------------------


def _webcari(files: dict[str, Any], manifest: pd.DataFrame, limit: float) -> _Split:
    """WebCaricature's protocol (:func:`pipeline.folds.cari.webcari_protocol`) in manifest ids."""
    from pipeline.folds.cari import read_webcari_list, read_webcari_pairs, webcari_protocol
    from pipeline.folds.split import SplitError

    prefix = f"{WEBCARI_IMAGES}/"
    id_of = {p.removeprefix(prefix): i for p, i in zip(manifest["path"].astype(str), manifest["image_id"].astype(str),
                                                        strict=True) if p.startswith(prefix)}
    train_pairs = _parse(lambda: read_webcari_pairs(files["train_pairs"]))
    test_pairs = _parse(lambda: read_webcari_pairs(files["test_pairs"]))
    lists = {key: (_parse(lambda p=probe: read_webcari_list(p)), _parse(lambda g=gallery: read_webcari_list(g)))
             for key, (probe, gallery) in files["identification"].items()}
    protocol: WebCariProtocol = _parse(lambda: webcari_protocol(train_pairs, test_pairs, lists, images=set(id_of)))
    skipped = [f"{where}: {reason}" for where, reason in protocol.skipped]

    # how much of the protocol is missing: test pairs, and distinct images of every file
    n_test = len(test_pairs)
    _check_skips(f"test pairs of {files['test_pairs']} have an image that is not in the manifest",
                 n_test - len(protocol.test_pairs), n_test, limit,
                 next((s for s in skipped if s.startswith("test line")), None))
    listed = {x.path for p in (*train_pairs, *test_pairs) for x in (p.caricature, p.photo)}
    listed |= {x.path for probe, gallery in lists.values() for x in (*probe, *gallery)}
    missing = sorted(listed - set(id_of))
    _check_skips("distinct protocol images are not in the manifest", len(missing), len(listed), limit,
                 missing[0] if missing else None)

    train_paths = {x.path for x in protocol.train}
    test_pair_paths = {x.path for p in protocol.test_pairs for x in (p.caricature, p.photo)}
    leaked = sorted(train_paths & test_pair_paths)
    if leaked:
        raise SplitError(f"WebCaricature split: {len(leaked)} images are both training images "
                         f"({files['train_pairs']}) and test-pair images ({files['test_pairs']}) (e.g. {leaked[0]})")
    label = {c: i for i, c in enumerate(protocol.classes)}
    test: dict[str, int] = {}
    for p in protocol.test_pairs:
        for x in (p.caricature, p.photo):
            test.setdefault(x.path, label.get(x.subject, -1))
    rows = []
    for s in protocol.identification:
        group = f"{s.direction}{s.k}"
        for role, images, labels in zip(("probe", "gallery"), (s.probe, s.gallery), s.labels(), strict=True):
            for x, y in zip(images, labels, strict=True):
                rows.append({"group": group, "direction": s.direction, "k": s.k, "role": role,
                             "image_id": id_of[x.path], "label": y})
                test.setdefault(x.path, label.get(x.subject, -1))
    pairs = _string_frame([{"input_id": id_of[p.caricature.path], "reference_id": id_of[p.photo.path],
                            "is_same": p.is_same, "block": p.block, "line": p.line} for p in protocol.test_pairs],
                          PAIR_DTYPES)
    identification_paths = {x.path for s in protocol.identification for x in (*s.probe, *s.gallery)}
    counts = {**protocol.counts(), "test_images": len(test),
              "unlabelled_test_images": sum(v == -1 for v in test.values()),
              "excluded_probes": sum(len(s.excluded_probes) for s in protocol.identification),
              "identification_rows": len(rows),
              "identification_images_in_train": len(identification_paths & train_paths)}
    if counts["identification_images_in_train"]:
        log.warning("%d probe/gallery images are also training images (the protocol's identification files and "
                    "its training pairs overlap; counted in identification_images_in_train)",
                    counts["identification_images_in_train"])
    return _Split("webcaricature", list(protocol.classes), [id_of[x.path] for x in protocol.train],
                  protocol.train_labels(), len({x.subject for x in protocol.train}),
                  [id_of[p] for p in test], list(test.values()), pairs,
                  _string_frame(rows, IDENTIFICATION_DTYPES), counts, skipped)
