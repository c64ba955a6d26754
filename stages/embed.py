"""Identity embeddings of faces with a trained checkpoint (model.pt), as .npy files that `verify` reads.

Every face gets the checkpoint's evaluation pre-processing: centre crop (160 of 182 px), resize, standardisation.

--aligned DIR [--ids FILE] --out E.npy: faces of an align-stage folder (all, or the ids in FILE, one per line).

It writes E.npy (N x 1792, float32, L2-normalised) and E.ids.txt (the image id of each row).

--pairs P.parquet --aligned DIR --out-dir D: both sides of a folds-stage pairs file, ready for `verify`.

It writes D/embeddings_a.npy, embeddings_b.npy, same.npy and pairs.tsv; pairs with an unaligned image are skipped.

IMAGE... --out E.npy: aligned square face crops (resized to the checkpoint's alignment size, 182 px).

--branch NAME: another branch's embeddings (a caricature model's verif, visual or cari; default the first).

With --detect, any photos: MTCNN-aligned first (the align stage's default settings); no face is an error.

A user tool, not a DVC stage: it reads no params and logs nothing to MLflow. Example:

\b
python -m stages embed -c data/finetune/demo_oulu/fold0-dynamic/model.pt --out-dir emb \\
    --pairs data/folds/demo_oulu/fold0-pairs.parquet --aligned data/aligned/demo_oulu
python -m stages verify --embeddings-a emb/embeddings_a.npy --embeddings-b emb/embeddings_b.npy --same emb/same.npy
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from pipeline.atomic import atomic_files
from pipeline.errors import UserError
from stages.common import user_errors

if TYPE_CHECKING:
    import torch

PAIR_COLUMNS = ("input_id", "reference_id", "is_same")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; an unavailable CUDA device is a user error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:<n>, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here (use auto or cpu)")
    return name


def load_checkpoint(path: Path, device: str):
    """``(model, meta, convention)``; a missing, foreign or mismatched file is a one-line user error."""
    from pipeline.align.crop import CONVENTIONS
    from pipeline.models.checkpoint import CheckpointError, load_model

    try:
        model, meta = load_model(path, device=device)
    except CheckpointError as exc:
        msg = str(exc)
        prefix = f"cannot read checkpoint {path}: "
        if msg.startswith(prefix):  # torch.load's first line can be long advice about weights_only: keep its type
            msg = f"{path} is not a model checkpoint of this project (torch.load: {msg[len(prefix):].split(':')[0]})"
        raise UserError(msg) from None
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:  # config or weights that do not fit the network
        raise UserError(f"checkpoint {path} does not rebuild a model: {str(exc).splitlines()[0]}") from None
    alignment = model.config.align_convention
    if alignment not in CONVENTIONS:
        raise UserError(f"checkpoint {path}: unknown alignment convention {alignment!r} "
                        f"(known: {', '.join(CONVENTIONS)})")
    return model, meta, CONVENTIONS[alignment]


def resize_faces(faces: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [N, H, W, 3]`` → ``[N, size, size, 3]`` with Pillow's bilinear filter (the alignment's resize)."""
    from PIL import Image

    if faces.shape[1:3] == (size, size):
        return faces
    out = np.empty((len(faces), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(faces):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize((size, size),
                                                                            resample=Image.Resampling.BILINEAR))
    return out


def embed_faces(model: torch.nn.Module, batches: Iterator[np.ndarray], *, crop: int, input_size: int, device: str,
                progress: Callable[[int], None] | None = None, branch: str | None = None) -> np.ndarray:
    """Embeddings ``float32 [N, D]`` of ``uint8 [B, S, S, 3]`` face batches (evaluation pre-processing) from the
    branch ``branch`` (default: the model's first)."""
    import torch

    from pipeline.training.data import preprocess

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for faces in batches:
            x = torch.from_numpy(np.ascontiguousarray(faces)).to(device).permute(0, 3, 1, 2)
            x = preprocess(x, crop=crop, input_size=input_size, train=False)
            out.append(model.embed(x, branch).float().cpu().numpy())
            if progress is not None:
                progress(len(faces))
    return np.concatenate(out)


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _ids_path(out: Path) -> Path:
    return out.with_suffix(".ids.txt") if out.suffix == ".npy" else out.with_name(out.name + ".ids.txt")


def _read_ids(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read --ids file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"--ids file {path} is not text (one image id per line)") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise UserError(f"--ids file {path} lists no image id (one per line)")
    return ids


def _face_source(aligned: Path):
    from pipeline.faces.source import FaceSource

    source = FaceSource(aligned)  # DatasetError (a UserError) names a missing folder or table
    if len(source) == 0:
        raise UserError(f"{aligned} holds no aligned face")
    return source


def _positions(source, ids: list[str], where: str) -> np.ndarray:
    """Rows of ``ids`` in ``source``; ids that are unknown or failed alignment are a user error naming one."""
    try:
        return source.indices(ids)
    except KeyError as exc:
        raise UserError(f"{where}: {exc.args[0]}") from None


def _read_batches(source, positions: np.ndarray, batch_size: int, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(positions), batch_size):
        yield resize_faces(source.read_batch(positions[start : start + batch_size]), size)


def _read_images(paths: list[Path]) -> list[np.ndarray]:
    """Decoded RGB images; unreadable files are one user error naming them."""
    from pipeline.align.images import decode_rgb
    from pipeline.errors import ImageProblem

    images, problems = [], []
    for p in paths:
        try:
            images.append(decode_rgb(p.read_bytes()))
        except IsADirectoryError:
            problems.append(f"{p} (a folder)")
        except OSError as exc:
            problems.append(f"{p} ({exc.strerror or exc})")
        except ImageProblem as exc:
            problems.append(f"{p} ({exc})")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"cannot read {len(problems)} image file(s): {'; '.join(problems[:3])}{more}")
    return images


def _detect_faces(images: list[np.ndarray], paths: list[Path], convention: str, device: str,
                  batch_size: int) -> list[np.ndarray]:
    """MTCNN-align each photo (the align stage's choice of face and crop); a photo without a face is an error."""
    from pipeline.align.batch import ALIGNED, align_images
    from pipeline.align.crop import CONVENTIONS
    from pipeline.align.run import AlignSettings

    if not CONVENTIONS[convention].detect:
        raise UserError(f"--detect: the checkpoint's faces were cut without detection ({convention}); give face "
                        "crops made the same way (an align-stage folder with --aligned, or crops as image files)")

    settings = AlignSettings(convention=convention, device=device)
    try:
        detector = settings.detector()
    except (ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"detector: {str(exc).splitlines()[0]}") from None
    crops: list[np.ndarray] = []
    failed: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        names = [str(p) for p in paths[start : start + batch_size]]
        rows, got, _ = align_images(chunk, names, detector, settings)
        it = iter(got)
        for row in rows:
            if row["status"] == ALIGNED:
                crops.append(next(it))
            else:
                failed.append(f"{row['image_id']} ({row['status'].replace('_', ' ')}: {row['reason']})")
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise UserError(f"no face found in {len(failed)} image(s): {'; '.join(failed[:3])}{more}")
    return crops


def _check_square(images: list[np.ndarray], paths: list[Path]) -> None:
    bad = [f"{p} ({im.shape[1]}x{im.shape[0]})" for im, p in zip(images, paths, strict=True)
           if im.shape[0] != im.shape[1]]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{len(bad)} image(s) are not square aligned face crops: {'; '.join(bad[:3])}{more}; "
                        "pass --detect to align photos first")


@user_errors
def command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="A model.pt written by a training stage.")],
    images: Annotated[list[Path] | None, typer.Argument(
        metavar="[IMAGE]...", help="Aligned square face crops (or any photos with --detect).")] = None,
    aligned: Annotated[Path | None, typer.Option(
        "--aligned", help="An align-stage output folder (data/aligned/<dataset>).")] = None,
    ids: Annotated[Path | None, typer.Option("--ids", help="With --aligned: the image ids to embed, one per line "
                                                           "(default: every aligned face).")] = None,
    pairs: Annotated[Path | None, typer.Option(
        "--pairs", help="A folds-stage pairs file (fold<k>-pairs.parquet); needs --aligned and --out-dir.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output .npy (N x D); the row ids go to <out>.ids.txt."
                                             )] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="With --pairs: folder for embeddings_a.npy, embeddings_b.npy, same.npy, pairs.tsv.")] = None,
    detect: Annotated[bool, typer.Option("--detect", help="Image files: MTCNN-align them first.")] = False,
    crop: Annotated[int | None, typer.Option(
        "--crop", min=1, help="Centre crop of the aligned faces", show_default="the checkpoint's (160 of 182)")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:<n>.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Faces per forward pass.")] = 100,
    branch: Annotated[str | None, typer.Option(
        "--branch", help="The branch (task) whose embeddings to write, e.g. verif, visual or cari of a caricature "
                         "model.", show_default="the first: identity / verif")] = None,
) -> None:
    images = list(images or [])
    _check_mode(images, aligned, ids, pairs, out, out_dir, detect)
    dev = resolve_device(device)
    # read and check the inputs first: a wrong id or file fails before the model is loaded
    if pairs is not None:
        assert aligned is not None and out_dir is not None
        source, plan = _pair_plan(pairs, aligned)
        positions = plan["used"]
    elif aligned is not None:
        source = _face_source(aligned)
        if ids is not None:
            row_ids = _read_ids(ids)
            positions = _positions(source, row_ids, str(ids))
        else:
            row_ids = list(source.ids)
            positions = np.arange(len(source), dtype=np.int64)
    else:
        decoded = _read_images(images)
        row_ids = [str(p) for p in images]

    model, meta, conv = load_checkpoint(checkpoint, dev)
    if branch is not None and branch not in model.task_names:
        raise UserError(f"--branch {branch}: {checkpoint} has the branches {', '.join(model.task_names)}")
    size, input_size = conv.size, model.config.network.input_size
    crop = model.config.crop.size if crop is None else crop
    if crop > size:
        raise UserError(f"--crop {crop} is larger than the aligned faces ({size} px, {model.config.align_convention})")
    kw = {"crop": crop, "input_size": input_size, "device": dev, "branch": branch}
    what = (f"{checkpoint} ({model.config.align_convention}: crop {crop} of {size} px, input {input_size} px"
            + (f", {meta['method']} fold {meta['fold']}" if "method" in meta and "fold" in meta else "")
            + (f", branch {branch}" if branch is not None else "") + f", {dev})")

    if aligned is not None:
        if source.crop_size != size:
            typer.echo(f"note: {aligned} holds {source.crop_size} px faces; resized to {size} px "
                       f"({model.config.align_convention})", err=True)
        emb = embed_faces(model, _read_batches(source, positions, batch_size, size), **kw)
    else:
        if detect:
            faces = _detect_faces(decoded, images, model.config.align_convention, dev, batch_size)
        else:
            _check_square(decoded, images)
            faces = decoded
        faces = [resize_faces(f[None], size)[0] for f in faces]
        batches = (np.stack(faces[i : i + batch_size]) for i in range(0, len(faces), batch_size))
        emb = embed_faces(model, batches, **kw)

    if pairs is not None:
        assert out_dir is not None
        _write_pairs(emb, plan, out_dir, what)
        return
    assert out is not None
    ids_out = _ids_path(out)
    with atomic_files(out, ids_out) as (tmp_out, tmp_ids):
        _save_npy(emb, tmp_out)
        tmp_ids.write_text("".join(f"{i}\n" for i in row_ids))
    typer.echo(f"embedded {len(emb)} face(s) with {what} -> {out} ({emb.shape[0]} x {emb.shape[1]}), {ids_out}")


def _check_mode(images: list[Path], aligned: Path | None, ids: Path | None, pairs: Path | None, out: Path | None,
                out_dir: Path | None, detect: bool) -> None:
    """Exactly one input mode, with its output option."""
    if pairs is not None:
        if aligned is None or out_dir is None:
            raise UserError("--pairs needs --aligned DIR (the faces) and --out-dir DIR (the outputs)")
        if images or ids is not None or out is not None:
            raise UserError("--pairs writes --out-dir; it takes no image files, --ids or --out")
    elif aligned is not None:
        if images:
            raise UserError("give either image files or --aligned DIR, not both")
    elif ids is not None:
        raise UserError("--ids needs --aligned DIR")
    elif not images:
        raise UserError("nothing to embed: give image files, --aligned DIR [--ids FILE], or --pairs FILE --aligned DIR")
    if pairs is None:
        if out is None:
            raise UserError("--out FILE.npy is required (--out-dir goes with --pairs)")
        if out_dir is not None:
            raise UserError("--out-dir goes with --pairs; use --out FILE.npy")
    if detect and not images:
        raise UserError("--detect applies to image files only (align-stage folders are aligned already)")


def _pair_plan(pairs: Path, aligned: Path) -> tuple[object, dict]:
    """Read a pairs file; keep the pairs whose two images are aligned (the others are counted on stderr).

    Returns the face source and ``{"used": rows of the faces to embed, "a", "b": each kept pair's index into
    used, "table": the kept pairs}``.
    """
    import pandas as pd

    if not pairs.is_file():
        raise UserError(f"pairs file not found: {pairs}")
    try:
        df = pd.read_parquet(pairs)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise UserError(f"cannot read pairs file {pairs} as parquet: {str(exc).splitlines()[0]}") from None
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{pairs} is not a pairs file: no column(s) {', '.join(missing)} "
                        "(expected a folds-stage fold<k>-pairs.parquet)")
    if len(df) == 0:
        raise UserError(f"{pairs} holds no pair")
    source = _face_source(aligned)
    a_ids = df["input_id"].astype(str).to_numpy(dtype=object)
    b_ids = df["reference_id"].astype(str).to_numpy(dtype=object)
    index = pd.Index(source.ids, dtype=object)
    pos_a, pos_b = index.get_indexer(a_ids), index.get_indexer(b_ids)
    ok = (pos_a >= 0) & (pos_b >= 0)
    n_skip = int((~ok).sum())
    if n_skip:
        k = int(np.flatnonzero(~ok)[0])
        first = a_ids[k] if pos_a[k] < 0 else b_ids[k]
        why = f"alignment failed ({source.failures[first]})" if first in source.failures else "not in the table"
        typer.echo(f"skipped {n_skip} of {len(df)} pairs with an image that has no aligned face, e.g. {first!r}: "
                   f"{why}", err=True)
    if not ok.any():
        raise UserError(f"no pair of {pairs} has both images aligned in {aligned}")
    used, inverse = np.unique(np.concatenate([pos_a[ok], pos_b[ok]]), return_inverse=True)
    n = int(ok.sum())
    table = pd.DataFrame({"row": np.flatnonzero(ok), "input_id": a_ids[ok], "reference_id": b_ids[ok],
                          "is_same": df["is_same"].to_numpy(dtype=bool)[ok]})
    return source, {"used": used.astype(np.int64), "a": inverse[:n], "b": inverse[n:], "table": table}


def _write_pairs(emb: np.ndarray, plan: dict, out_dir: Path, what: str) -> None:
    table = plan["table"]
    same = table["is_same"].to_numpy(dtype=bool)
    names = ("embeddings_a.npy", "embeddings_b.npy", "same.npy", "pairs.tsv")
    with atomic_files(*(out_dir / n for n in names)) as (ta, tb, ts, tp):
        _save_npy(emb[plan["a"]], ta)
        _save_npy(emb[plan["b"]], tb)
        _save_npy(same, ts)
        table.to_csv(tp, sep="\t", index=False)
    typer.echo(f"embedded {len(emb)} face(s) of {len(table)} pairs ({int(same.sum())} same) with {what} -> "
               f"{out_dir}/{{{','.join(names)}}}")
    typer.echo(f"next: python -m stages verify --embeddings-a {out_dir / names[0]} --embeddings-b "
               f"{out_dir / names[1]} --same {out_dir / names[2]}")
