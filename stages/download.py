"""Get a dataset's raw files into data/raw/<DATASET>: generate the demo, download LFW, or verify a licensed dataset."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, write_json
from pipeline.config import (
    DemoCaricatureSource,
    DemoExpressionSource,
    DemoIdentitySource,
    LfwSource,
    LicensedSource,
)
from pipeline.errors import ParamsError
from stages.common import load_stage_params, progress_bar, user_errors
from stages.tracking import stage_run

#: params sections this stage reads; dvc.yaml must declare the same (tests check it)
DECLARED = ["datasets.{name}.reader", "datasets.{name}.root", "datasets.{name}.source", "demo"]
RAW = layout.RAW
DOWNLOAD_CACHE = layout.DOWNLOAD_CACHE


def _expect_root(name: str, root: str, wanted: Path) -> None:
    if Path(root) != wanted:
        raise ParamsError(f"datasets.{name}.root must be {wanted.as_posix()} for this source kind (got {root!r})")


@user_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name (a key of `datasets` in params.yaml).")],
) -> None:
    sp = load_stage_params(ctx, [s.format(name=name) for s in DECLARED])
    reader, root, src = (sp.get(f"datasets.{name}.{k}") for k in ("reader", "root", "source"))
    demo = sp.get("demo")
    out = RAW / name
    t0 = time.perf_counter()
    with stage_run("download", sp, item=name) as run, atomic_dir(out) as tmp:
        info: dict = {"dataset": name, "kind": src.kind}
        if isinstance(src, (DemoExpressionSource, DemoIdentitySource)):
            info.update(_generate_demo(name, root, src, demo, out, tmp))
            data_root, fingerprint = tmp / "images", "content"
        elif isinstance(src, DemoCaricatureSource):
            info.update(_generate_caricature_demo(name, root, src, demo, out, tmp))
            data_root, fingerprint = tmp / info["root"], "content"
        elif isinstance(src, LfwSource):
            _expect_root(name, root, out / "lfw")
            info.update(_download_lfw(src, tmp))
            data_root, fingerprint = tmp / "lfw", "content"
        else:
            assert isinstance(src, LicensedSource)
            data_root = _verify_licensed(name, reader, Path(root), src)
            fingerprint = src.fingerprint
        with progress_bar(f"listing {name}", None, unit="files") as advance:
            info["files"] = _listing(data_root, tmp / "listing.tsv", fingerprint, advance)
        write_json(info, tmp / "source.json")
        info["seconds"] = round(time.perf_counter() - t0, 2)
        run.log_metrics({"files": info["files"], "seconds": info["seconds"]})
        run.log_dict(info, "download.json")
    typer.echo(f"{name}: {info['files']} files in {info['seconds']} s -> {out}")


def _listing(root: Path, out: Path, fingerprint: str, advance) -> int:
    from pipeline.data.listing import write_listing

    return write_listing(root, out, fingerprint, progress=advance)  # type: ignore[arg-type]


def _generate_demo(name: str, root: str, src, demo, out: Path, tmp: Path) -> dict:
    from pipeline.data import demo as gen

    _expect_root(name, root, out / "images")
    if isinstance(src, DemoExpressionSource):
        total = sum(gen.sequence_length(demo.seed, src.first_identity + i, e, tuple(src.frames))
                    for i in range(src.n_subjects) for e in src.expressions)
        with progress_bar(f"generating {name}", total) as advance:
            summary = gen.generate_expression_dataset(
                tmp / "images", seed=demo.seed, first_identity=src.first_identity, n_subjects=src.n_subjects,
                expressions=tuple(src.expressions), frames=tuple(src.frames), image_size=tuple(src.image_size),
                quality=demo.quality, workers=demo.workers, progress=advance)
    else:
        total = src.n_identities * src.images_per_identity
        with progress_bar(f"generating {name}", total) as advance:
            summary = gen.generate_identity_dataset(
                tmp / "images", seed=demo.seed, first_identity=src.first_identity, n_identities=src.n_identities,
                images_per_identity=src.images_per_identity, image_size=tuple(src.image_size),
                quality=demo.quality, workers=demo.workers, progress=advance)
    d = summary.to_dict()
    return {"images": d["n_images"], "identities": d["subjects"], "demo_seed": demo.seed}


def _generate_caricature_demo(name: str, root: str, src: DemoCaricatureSource, demo, out: Path, tmp: Path) -> dict:
    """The caricature demo: the dataset root ``data/raw/<name>/CaVI_Dataset`` or ``…/WebCaricature`` and the
    protocol files (CaVI's ``train-test-files/testing_1.txt`` beside the root, WebCaricature's inside it)."""
    from pipeline.data import demo_caricature as gen

    _expect_root(name, root, out / gen.ROOTS[src.layout])
    total = src.n_identities * (src.photos_per_identity + src.caricatures_per_identity)
    with progress_bar(f"generating {name}", total) as advance:
        summary = gen.generate_caricature_dataset(
            tmp, layout=src.layout, seed=demo.seed, first_identity=src.first_identity, n_identities=src.n_identities,
            photos_per_identity=src.photos_per_identity, caricatures_per_identity=src.caricatures_per_identity,
            image_size=tuple(src.image_size), exaggeration=tuple(src.exaggeration), artists=src.artists,
            pairs=src.pairs, downsample=src.pair_downsample(), quality=demo.quality, workers=demo.workers,
            progress=advance)
    d = summary.to_dict()
    return {"images": d["n_images"], "photos": d["n_photos"], "caricatures": d["n_caricatures"],
            "identities": d["subjects"], "demo_seed": demo.seed, "layout": src.layout, "root": gen.ROOTS[src.layout],
            "protocol_files": d["protocol_files"], "protocol": d["protocol"]}


def _download_lfw(src: LfwSource, tmp: Path) -> dict:
    from pipeline.data.download import KNOWN_DOWNLOADS, download, extract_archive

    DOWNLOAD_CACHE.mkdir(parents=True, exist_ok=True)
    files = {}
    for remote in KNOWN_DOWNLOADS["lfw"]:
        url, checksum = remote.url, remote.checksum
        if remote.name == "lfw.tgz":
            url, checksum = src.url or url, src.checksum or checksum
        elif remote.name == "pairs.txt":
            url, checksum = src.pairs_url or url, src.pairs_checksum or checksum
        files[remote.name] = download(url, DOWNLOAD_CACHE / remote.name, checksum=checksum)
    extract_archive(files["lfw.tgz"], tmp / "lfw_extracted")
    # the archive holds one top folder `lfw/`; the dataset root is data/raw/<name>/lfw
    inner = tmp / "lfw_extracted" / "lfw"
    (inner if inner.is_dir() else tmp / "lfw_extracted").rename(tmp / "lfw")
    shutil.rmtree(tmp / "lfw_extracted", ignore_errors=True)
    (tmp / "pairs.txt").write_bytes(files["pairs.txt"].read_bytes())
    return {"archive": files["lfw.tgz"].name}


def _verify_licensed(name: str, reader: str, root: Path, src: LicensedSource) -> Path:
    from pipeline.data.licensed import verify_licensed_file, verify_licensed_root

    if reader == "msceleb":
        if not src.tsv:
            raise ParamsError(f"datasets.{name}.source.tsv: set it to the MS-Celeb-1M TSV file")
        tsv = verify_licensed_file(name, reader, Path(src.tsv), param=f"datasets.{name}.source.tsv")
        from pipeline.data.readers.msceleb import extract_tsv_to_shards

        root.mkdir(parents=True, exist_ok=True)
        with progress_bar(f"extracting {tsv.name}", None) as advance:
            extract_tsv_to_shards(tsv, root, shard_size=src.shard_size, progress=advance)
        return root
    return verify_licensed_root(name, reader, root, param=f"datasets.{name}.root")
