"""Decoding a batch of encoded faces on the training device (``pretrain.decode: device``).

With ``decode: worker`` every face is decoded by OpenCV in a DataLoader worker process and the decoded batch
(``3·S²`` bytes a face) travels through shared memory and pinned memory to the GPU. On a GPU box the decoders then
compete with the training process for the CPU (measured on an H200: the loop reached 71 % of the step's speed
with 6 workers and got *slower* with 8). With ``decode: device`` the workers only read the bytes
(:class:`~pipeline.training.shard_data.ShardBytes`) and :func:`decode_faces` decodes the whole batch at once in
the training process with torchvision: on CUDA, ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG,
batched, on the GPU's hardware JPEG engines where the GPU has them: A100, H100, H200); on the CPU, torchvision's
libjpeg-turbo / libpng, which give exactly OpenCV's pixels (tested), so a CPU run is bit-identical in either mode.
nvJPEG's inverse DCT and chroma upsampling are not libjpeg-turbo's: on CUDA pixels may differ slightly
(``tests/test_training_cuda.py`` bounds the difference).

On CUDA the current stream is synchronised before the decode: nvJPEG's hardware decoder writes its outputs
without waiting for work queued on the caller's stream, so memory that queued kernels still read (freed to the
caching allocator, e.g. an optimiser step's temporaries) could be overwritten (pytorch/vision#9606, fixed in
TorchCodec, not in torchvision). torchvision already blocks the host until its decode finishes, so the wait costs
only the overlap with the queued work.

PNG crops (``align.format: png``) are decoded on the CPU in the training process and then moved (nvJPEG decodes
JPEG only); use ``decode: worker`` for PNG shards.

torchvision is imported on the first call only, so :mod:`pipeline.training.pretrain` still imports on a bare
torch install. torchvision 0.29 (our pin) deprecates its image decoders in favour of TorchCodec (0.16+, not a
dependency here, and absent from the GPU boxes, which have torchvision 0.26); the deprecation warning is silenced
around the calls, and the functions still work.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pipeline.errors import DatasetError
from pipeline.faces.shards import decode_crop
from pipeline.training.shard_data import Batch, EncodedBatch, ShardFaces

__all__ = ["batch_to_device", "decode_faces", "is_jpeg"]

_JPEG_MAGIC = (0xFF, 0xD8)
#: errors of the device itself, not of the data: never reported as an undecodable face
_DEVICE_ERRORS: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,) + (
    (torch.AcceleratorError,) if hasattr(torch, "AcceleratorError") else ())


def is_jpeg(batch: EncodedBatch) -> np.ndarray:
    """``bool [B]``: which faces of ``batch`` are JPEG files (start with the SOI marker ``FF D8``)."""
    data = batch.data.numpy()
    starts = batch.offsets[:-1].numpy()
    lengths = np.diff(batch.offsets.numpy())
    out = np.zeros(len(starts), dtype=bool)
    long = lengths >= 2
    out[long] = (data[starts[long]] == _JPEG_MAGIC[0]) & (data[starts[long] + 1] == _JPEG_MAGIC[1])
    return out


def decode_faces(batch: EncodedBatch, faces: ShardFaces, device: torch.device | str) -> torch.Tensor:
    """The faces of ``batch`` decoded on ``device``: ``uint8 [B, 3, S, S]`` RGB (``S`` = ``faces.crop_size``).

    JPEG faces are decoded together (one batched nvJPEG call on CUDA); other formats one by one on the CPU.

    Raises:
        DatasetError: a face whose bytes do not decode (named by shard file and offset, one line), or one of
            another size than ``faces.crop_size``. Device errors (out of memory, a failed kernel) pass unchanged.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    device = torch.device(device)
    bounds = batch.offsets.tolist()
    views = [batch.data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    jpeg = is_jpeg(batch)
    out: list[torch.Tensor | None] = [None] * len(views)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()  # see the module docstring (pytorch/vision#9606)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision are "
                                    "deprecated", DeprecationWarning)
            which = np.flatnonzero(jpeg).tolist()
            if which:
                decoded = decode_jpeg([views[k] for k in which], mode=ImageReadMode.RGB, device=device)
                for k, img in zip(which, decoded, strict=True):
                    out[k] = img
            for k in np.flatnonzero(~jpeg).tolist():
                out[k] = decode_image(views[k], mode=ImageReadMode.RGB).to(device, non_blocking=True)
    except _DEVICE_ERRORS:
        raise
    except RuntimeError as exc:
        raise _undecodable(batch, faces, views, exc) from exc
    for k, img in enumerate(out):
        assert img is not None
        faces.check_size(int(batch.index[k]), height=img.shape[1], width=img.shape[2])
    return torch.stack(out)  # type: ignore[arg-type]


def _undecodable(batch: EncodedBatch, faces: ShardFaces, views: list[torch.Tensor], exc: Exception) -> DatasetError:
    """The one-line error for a batch torchvision could not decode: the first face OpenCV cannot decode either,
    else (a file only the device decoder refuses) torchvision's own first line."""
    for k, view in enumerate(views):
        try:
            decode_crop(view.numpy().tobytes(), where=faces.location(int(batch.index[k])))
        except DatasetError as err:
            return err
    first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return DatasetError(f"the device's JPEG decoder failed on a batch OpenCV decodes ({first.strip()}): set "
                        "pretrain.decode: worker")


def batch_to_device(batch: Batch, faces: ShardFaces, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's batch on ``device``: ``(uint8 [B, 3, S, S], int64 [B])``; an :class:`EncodedBatch` is decoded
    there (:func:`decode_faces`), decoded faces are copied (``non_blocking``: from pinned memory on CUDA)."""
    if isinstance(batch, EncodedBatch):
        return decode_faces(batch, faces, device), batch.labels.to(device, non_blocking=True)
    raw, y = batch
    return raw.to(device, non_blocking=True), y.to(device, non_blocking=True)
