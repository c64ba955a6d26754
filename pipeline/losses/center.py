"""Center loss exactly as the original code implements it (docs/method.md §2.2).

Centers ``C`` [K, D] are zero-initialised and not trained by the optimiser. Per sample the loss is
``0.5 * ||e_i - C[y_i]||^2`` (``e`` is the L2-normalised embedding; normalising is the caller's job), computed with the
centers as they were **before** this step's update; its gradient flows into ``e`` only. Once per step, every class
``j`` present in the batch with ``n_j`` samples moves toward its batch mean::

    C[j] <- C[j] - (1 - alpha) * (C[j] - mean_{i: y_i = j} e_i)

so ``1 - alpha`` (``center_loss_alfa``, default 0.5) is the step size, not Wen et al.'s alpha. Classes absent from the
batch do not move.

Typical step::

    per_sample = center_loss(emb, labels)       # pre-update centers
    ...backward / optimiser step...
    center_loss.update(emb, labels)             # or the split below

Distributed training: ``update`` = ``apply_update(*batch_statistics(emb, labels))``. Each rank computes its
``(sums, counts)``, all-reduces both with SUM (``dist.all_reduce(sums); dist.all_reduce(counts)``), then every rank
calls ``apply_update``: the result equals one update on the global batch, and the centers stay identical on all ranks
(so it does not matter whether DDP also broadcasts buffers). Nothing here copies to the host, except the label range
check on CPU labels (see :meth:`CenterLoss.check_labels`).
"""

from __future__ import annotations

import torch

__all__ = ["CenterLoss"]


class CenterLoss(torch.nn.Module):
    """Center loss with the original moving-average center update.

    Args:
        num_classes: ``K``, the number of centers.
        dim: ``D``, the embedding size.
        alpha: ``center_loss_alfa``; the update step size is ``1 - alpha`` (default 0.5 = halfway to the batch mean).
        dtype: dtype of the centers (default float32); sums and counts use it too.
        check_labels: ``True`` = always check that labels lie in ``[0, K)`` (copies min/max to the host on an
            accelerator), ``False`` = never, ``None`` (default) = only when the labels are on the CPU, where it is
            free; an out-of-range label on an accelerator then fails inside the indexing kernel instead.

    Buffers:
        centers (Tensor[K, D]): saved in ``state_dict`` and moved by ``.to()``; never requires grad.
    """

    centers: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        dim: int,
        alpha: float = 0.5,
        *,
        dtype: torch.dtype = torch.float32,
        check_labels: bool | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes} and {dim}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"center loss alpha must be in [0, 1], got {alpha}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.check_labels = check_labels
        self.register_buffer("centers", torch.zeros(num_classes, dim, dtype=dtype))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, alpha={self.alpha}"

    def _validate(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Shape/dtype checks (metadata only) and the label range check (see ``check_labels``)."""
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (B, {self.dim}), got {tuple(emb.shape)}")
        if labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
            raise ValueError(f"labels must have shape ({emb.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        check = labels.device.type == "cpu" if self.check_labels is None else self.check_labels
        if check and labels.numel() > 0:
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"center loss label {bad} out of range [0, {self.num_classes})")

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``0.5 * ||e_i - C[y_i]||^2`` with the current (pre-update) centers.

        Args:
            emb (Tensor[B, D]): embeddings (the original uses the L2-normalised ones).
            labels (Tensor[B], int): class indices in ``[0, K)``.

        Returns:
            Tensor[B]: in ``emb``'s dtype; differentiable w.r.t. ``emb`` only.
        """
        self._validate(emb, labels)
        batch_centers = self.centers.index_select(0, labels.long()).to(emb.dtype)
        return 0.5 * (emb - batch_centers).pow(2).sum(dim=1)

    @torch.no_grad()
    def batch_statistics(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums and counts of a batch (detached), to be all-reduced in distributed training.

        Args:
            emb (Tensor[B, D]): embeddings.
            labels (Tensor[B], int): class indices in ``[0, K)``.

        Returns:
            sums (Tensor[K, D]): ``sum_{i: y_i = j} e_i``, in the centers' dtype and device.
            counts (Tensor[K]): ``n_j`` (exact small integers, stored in the centers' dtype).
        """
        self._validate(emb, labels)
        idx = labels.to(device=self.centers.device, dtype=torch.long)
        values = emb.detach().to(device=self.centers.device, dtype=self.centers.dtype)
        sums = torch.zeros_like(self.centers).index_add_(0, idx, values)
        counts = self.centers.new_zeros(self.num_classes).index_add_(0, idx, self.centers.new_ones(idx.shape[0]))
        return sums, counts

    @torch.no_grad()
    def apply_update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """``C[j] <- C[j] - (1 - alpha) * (C[j] - sums[j] / counts[j])`` for every ``j`` with ``counts[j] > 0``.

        Args:
            sums (Tensor[K, D]): per-class embedding sums (possibly summed over ranks).
            counts (Tensor[K]): per-class sample counts (possibly summed over ranks).
        """
        if sums.shape != self.centers.shape or counts.shape != (self.num_classes,):
            raise ValueError(f"expected sums {tuple(self.centers.shape)} and counts ({self.num_classes},), "
                             f"got {tuple(sums.shape)} and {tuple(counts.shape)}")
        sums = sums.to(self.centers)
        counts = counts.to(self.centers)
        present = (counts > 0).unsqueeze(1)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        delta = (1.0 - self.alpha) * (self.centers - means)
        self.centers.sub_(torch.where(present, delta, torch.zeros_like(delta)))

    @torch.no_grad()
    def update(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centers of the classes in the batch toward their batch means (single process)."""
        self.apply_update(*self.batch_statistics(emb, labels))
