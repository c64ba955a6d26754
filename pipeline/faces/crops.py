"""Square crops of face tensors (torch only): the centre crop of evaluation and the random crop of training.

Kept free of pandas/OpenCV so the training core and the benchmarks run on a bare torch install;
:mod:`pipeline.faces.source` re-exports both.
"""

from __future__ import annotations

import torch

__all__ = ["center_crop", "random_crop"]


def _crop_args(x: torch.Tensor, size: int) -> tuple[int, int]:
    if x.ndim not in (3, 4):
        raise ValueError(f"expected a [C, H, W] or [N, C, H, W] tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    return h, w


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centred ``size × size`` window of ``x`` (``[C, H, W]`` or ``[N, C, H, W]``), as a view.

    The top-left corner is ``((H - size) // 2, (W - size) // 2)``: 11 for 160 out of 182, as facenet's ``crop``
    and TF's central crop.

    Raises:
        ValueError: ``x`` not 3-D/4-D, or ``size`` larger than the image.
    """
    h, w = _crop_args(x, size)
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random ``size × size`` window of ``x``; each image of a batch gets its own window.

    Corners are drawn uniformly in ``[0, H - size] × [0, W - size]`` (both ends included, as TF's ``random_crop``)
    from ``generator`` (the global RNG when None), on the generator's device.

    Args:
        x: ``[C, H, W]`` or ``[N, C, H, W]``, any dtype and device.
        size: side of the crop.
        generator: source of randomness; the same seed gives the same crops.

    Returns:
        ``[C, size, size]`` (a view) or ``[N, C, size, size]`` (a new tensor on ``x.device``).

    Raises:
        ValueError: ``x`` not 3-D/4-D, or ``size`` larger than the image.
    """
    h, w = _crop_args(x, size)
    n = 1 if x.ndim == 3 else x.shape[0]
    dev = generator.device if generator is not None else torch.device("cpu")
    tops = torch.randint(0, h - size + 1, (n,), generator=generator, device=dev).to(x.device)
    lefts = torch.randint(0, w - size + 1, (n,), generator=generator, device=dev).to(x.device)
    if x.ndim == 3:
        top, left = int(tops[0]), int(lefts[0])
        return x[:, top : top + size, left : left + size]
    span = torch.arange(size, device=x.device)
    rows = (tops[:, None] + span)[:, None, :, None]  # [N,1,S,1]
    cols = (lefts[:, None] + span)[:, None, None, :]  # [N,1,1,S]
    batch = torch.arange(n, device=x.device)[:, None, None, None]  # [N,1,1,1]
    chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]  # [1,C,1,1]
    return x[batch, chan, rows, cols]  # [N,C,S,S]
