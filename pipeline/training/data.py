"""Training data held in memory as ``uint8``, the permutation-stream sampler and the pre-processing.

Small fine-tuning sets (Oulu-CASIA, CK+, the demo) fit on the GPU as ``uint8 [N, 3, S, S]`` (1440 Oulu images
at 182 px = 143 MB), so batches are gathered by indexing: no DataLoader round trips.

- :class:`PermutationStream`: the original's sampler (docs/method.md §4.2): an infinite stream of fresh random
  permutations of the training list; each batch takes the next ``batch_size`` indices, crossing permutation
  boundaries. Its state (generator + current permutation + position) is checkpointed, so a resumed run draws the
  same batches.
- :func:`preprocess`: crop (random for training, centre for evaluation; docs/method.md §9.10, §9.31), optional resize to
  the model's input size, optional left-right flip, then per-image standardisation (docs/method.md §4.4):
  ``(x − mean) / max(std, 1/√(H·W·C))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.faces.crops import center_crop
from pipeline.faces.crops import random_crop as take_random_crop

__all__ = ["LabelledImages", "PermutationStream", "preprocess", "standardize"]


@dataclass
class LabelledImages:
    """Images and their per-task labels, on one device.

    Attributes:
        images: ``uint8 [N, 3, S, S]``.
        labels: per task name, ``int64 [N]`` (``-1`` = no label for that task).
        image_ids: the N manifest image ids, in order.
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    image_ids: list[str]

    def __len__(self) -> int:
        return len(self.image_ids)

    def to(self, device: torch.device | str) -> LabelledImages:
        return LabelledImages(self.images.to(device), {k: v.to(device) for k, v in self.labels.items()},
                              self.image_ids)

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(uint8 [B, 3, S, S], {task: [B]})`` for the indices ``index [B]``."""
        index = index.to(self.images.device)
        return self.images.index_select(0, index), {k: v.index_select(0, index) for k, v in self.labels.items()}


class PermutationStream:
    """Batches of indices from an endless stream of seeded random permutations of ``range(n)``.

    Args:
        n: number of training images.
        seed: seed of the stream's own CPU generator.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("no training images")
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        """The next ``batch_size`` indices, ``int64 [batch_size]`` (CPU)."""
        parts, need = [], batch_size
        while need:
            if self.pos == self.n:
                self.perm = torch.randperm(self.n, generator=self.generator)
                self.pos = 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"n": self.n, "generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"sampler state is for {state['n']} images, this run has {self.n}")
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation (TF ``per_image_standardization`` / facenet ``prewhiten``).

    ``x [B, C, H, W]`` float → ``(x − mean) / max(std, 1/√(C·H·W))`` with population statistics per image.
    """
    flat = x.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    floor = 1.0 / float(flat.shape[1]) ** 0.5
    return (x - mean[:, None, None, None]) / torch.clamp(std, min=floor)[:, None, None, None]


def preprocess(images: torch.Tensor, *, crop: int, input_size: int, train: bool, random_crop: bool = True,
               flip: bool = False, generator: torch.Generator | None = None,
               channels_last: bool = False) -> torch.Tensor:
    """``uint8 [B, 3, S, S]`` → standardised ``float32 [B, 3, input_size, input_size]``.

    Args:
        crop: side of the crop taken from the stored ``S``-px faces (160 of 182).
        input_size: model input side; the crop is resized (bilinear, antialiased) when it differs.
        train: training (random crop when ``random_crop``, flips when ``flip``) or evaluation (centre crop).
        generator: randomness of crops and flips (on the images' device).
        channels_last: return a channels-last tensor (faster convolutions on CUDA).
    """
    if images.shape[-1] == crop:
        x = images
    elif train and random_crop:
        x = take_random_crop(images, crop, generator)
    else:
        x = center_crop(images, crop)
    x = x.float()
    if input_size != crop:
        x = torch.nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                                            antialias=True)
    if train and flip:
        mask = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    x = standardize(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
