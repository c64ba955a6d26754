"""Detect faces in image files with the pipeline's MTCNN (all faces, sorted by score; source pixel coordinates)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import typer

from stages.common import user_errors

#: default ``--max-pixels``: larger images are refused from their header, before any decoding (a 20000 x 20000
#: image would need 1.2 GB decoded and several GB in the detector's pyramid)
MAX_PIXELS = 50_000_000


def image_pixels(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from an encoded image's header (nothing decoded), or None when PIL cannot read it (the
    decoder then reports the problem)."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our limit applies, not PIL's bomb check
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable header: the decoder's error message names the problem
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


@user_errors
def command(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE...", help="Image files (any format OpenCV reads).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per image.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:<n>.")] = "auto",
    resample: Annotated[str, typer.Option(help="Pyramid/crop resampling: nearest (the original), area, bilinear.")
                        ] = "nearest",
    min_face: Annotated[float, typer.Option(min=12, help="Minimum face size in pixels (≥ 12, the P-Net cell).")
                        ] = 20,
    thresholds: Annotated[tuple[float, float, float], typer.Option(help="P-, R-, O-Net score thresholds.")
                          ] = (0.6, 0.7, 0.7),
    weights: Annotated[Path | None, typer.Option(help="MTCNN weights: folder of *.lz4 or an exported .npz "
                                                      "(default: the mtcnn package's).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per detector batch.")] = 16,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse larger images (width x height) before decoding."
                                            )] = MAX_PIXELS,
) -> None:
    """Print every face MTCNN finds: box [x1, y1, x2, y2], score and 5 landmarks (eyes, nose, mouth corners).

    Unreadable files, and images over `--max-pixels` (checked from the header, before decoding), are reported with
    an `error` entry (exit code 1), never a crash.
    """
    from pipeline.align.detector import MTCNN
    from pipeline.align.images import ImageProblem, decode_rgb
    from pipeline.errors import UserError

    if resample not in ("nearest", "area", "bilinear"):
        raise UserError(f"--resample must be nearest, area or bilinear, not {resample!r}")
    try:
        detector = MTCNN(weights, device=device, min_face=min_face, thresholds=thresholds,
                         resample=resample)  # type: ignore[arg-type]
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"detector: {exc}") from exc
    results: list[dict] = []
    decoded: list[tuple[int, object]] = []
    for path in images:
        entry: dict = {"path": str(path), "faces": []}
        results.append(entry)
        try:
            data = path.read_bytes()
            size = image_pixels(data)
            if size is not None and size[0] * size[1] > max_pixels:
                entry["width"], entry["height"] = size
                entry["error"] = (f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels is over --max-pixels "
                                  f"{max_pixels:,}: not decoded")
                continue
            rgb = decode_rgb(data)
        except OSError as exc:
            entry["error"] = f"unreadable: {exc.strerror or exc}"
            continue
        except ImageProblem as exc:
            entry["error"] = str(exc)
            continue
        entry["width"], entry["height"] = int(rgb.shape[1]), int(rgb.shape[0])
        if min(rgb.shape[:2]) < min_face:
            entry["note"] = f"smaller than min_face={min_face:g}: no detection possible"
            continue
        decoded.append((len(results) - 1, rgb))
    for start in range(0, len(decoded), batch_size):
        batch = decoded[start:start + batch_size]
        for (i, _), faces in zip(batch, detector.detect([im for _, im in batch]), strict=True):
            results[i]["faces"] = faces.to_list()
    if as_json:
        typer.echo(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                typer.echo(f"{r['path']}: error: {r['error']}")
                continue
            typer.echo(f"{r['path']}: {len(r['faces'])} face(s)" + (f" ({r['note']})" if "note" in r else ""))
            for f in r["faces"]:
                x1, y1, x2, y2 = f["box"]
                typer.echo(f"  score {f['score']:.4f}  box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]  "
                           f"landmarks {' '.join(f'({x:.1f},{y:.1f})' for x, y in f['landmarks'])}")
    if any("error" in r for r in results):
        raise typer.Exit(1)
