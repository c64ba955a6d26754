"""Center loss in two forms: the original fine-tuning code's and facenet's (docs/method.md §2.2).

Centers ``C`` [K, D] are zero-initialised and not trained by the optimiser. Both forms compute the loss with the
centers as they were **before** this step's update (its gradient flows into the features only), then move, once per
step, the center of every class ``j`` present in the batch (``n_j`` samples; absent classes do not move). ``1 -
alpha`` (``center_loss_alfa``) is the step size, not Wen et al.'s alpha.

``form="metrics_loss"`` (the default; the original fine-tuning scripts' ``metrics_loss.center_loss``, and the
fine-tuning task sets' ``center``): the features ``e`` are the **L2-normalised** embeddings (normalising is the
caller's job); per sample the loss is ``0.5 * ||e_i - C[y_i]||^2`` (the caller takes the batch mean); each present
class moves toward its batch mean::

    C[j] <- C[j] - (1 - alpha) * (C[j] - mean_{i: y_i = j} e_i)

``form="facenet"`` (davidsandberg/facenet ``facenet.center_loss(prelogits, label_batch, alfa, nrof_classes)``, as
``train_softmax.py`` pretrains): the features ``f`` are the **raw prelogits** (the layer before the L2
normalisation: in facenet its bottleneck's 128/512-d output; our network has no bottleneck, so pretraining passes the
identity branch's 1792-d prelogits, pooled features after dropout, as float32). The loss is
``tf.reduce_mean(tf.square(f - C[y]))``, the mean over all ``B x D`` elements: per sample ``mean_d (f_id - C[y_i]_d)^2``
here, whose batch mean the caller takes. The update is facenet's ``tf.scatter_sub(centers, label, (1 - alfa) *
(centers_batch - features))``, one update per **sample**, summed where labels repeat (not divided by ``n_j``)::

    C[j] <- C[j] - (1 - alpha) * sum_{i: y_i = j} (C[j] - f_i)
          = C[j] - (1 - alpha) * (n_j * C[j] - sum_{i: y_i = j} f_i)

(``centers_batch`` is gathered before the ``scatter_sub``, so the loss, although computed under
``tf.control_dependencies([centers])``, sees the pre-update centers.) A class with ``n_j (1 - alpha) > 1`` overshoots
its batch mean: facenet's default ``center_loss_alfa`` is 0.95.

Typical step::

    per_sample = center_loss(feats, labels)     # [B], pre-update centers
    ...backward / optimiser step...
    center_loss.update(feats, labels)           # or the split below

Distributed training: ``update`` = ``apply_update(*batch_statistics(feats, labels))`` in both forms. Each rank
computes its ``(sums, counts)``, all-reduces both with SUM (``dist.all_reduce(sums); dist.all_reduce(counts)``),
then every rank calls ``apply_update``: the result equals one update on the global batch, and the centers stay
identical on all ranks (so it does not matter whether DDP also broadcasts buffers). Nothing here copies to the host,
except the label range check on CPU labels (see :meth:`CenterLoss.check_labels`).
"""

from __future__ import annotations

import torch

from pipeline.settings import CENTER_FORMS

__all__ = ["CenterLoss"]


class CenterLoss(torch.nn.Module):
    """Center loss with a moving-average center update, in the form ``form`` (module docstring).

    Args:
        num_classes: ``K``, the number of centers.
        dim: ``D``, the feature size.
        alpha: ``center_loss_alfa``; the update step size is ``1 - alpha`` (default 0.5 = halfway to the batch mean
            in the ``metrics_loss`` form).
        form: ``metrics_loss`` (default: L2-normalised embeddings, ``0.5 * sum_d``, update toward the batch means) |
            ``facenet`` (raw prelogits, ``mean_d``, one update per sample).
        dtype: dtype of the centers (default float32); sums and counts use it too.
        check_labels: ``True`` = always check that labels lie in ``[0, K)`` (copies min/max to the host on an
            accelerator), ``False`` = never, ``None`` (default) = only when the labels are on the CPU, where it is
            free; an out-of-range label on an accelerator then fails inside the indexing kernel instead.
        beyond: what a label ``>= K`` means: ``error`` (default) | ``zero``: its center is the zero vector and it
            moves no center (the caricature original's WebCaricature matrix, sized by the training identities while
            the labels index a larger set: TensorFlow's GPU gather returns zeros there; docs/method.md §9.18).

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
        form: str = "metrics_loss",
        dtype: torch.dtype = torch.float32,
        check_labels: bool | None = None,
        beyond: str = "error",
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes} and {dim}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"center loss alpha must be in [0, 1], got {alpha}")
        if form not in CENTER_FORMS:
            raise ValueError(f"center loss form must be one of {', '.join(CENTER_FORMS)}, got {form!r}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.alpha = float(alpha)
        self.form = form
        if beyond not in ("error", "zero"):
            raise ValueError(f"beyond must be 'error' or 'zero', got {beyond!r}")
        self.check_labels = check_labels
        self.beyond = beyond
        self.register_buffer("centers", torch.zeros(num_classes, dim, dtype=dtype))

    @property
    def normalized_input(self) -> bool:
        """Whether the form takes the L2-normalised embeddings (``metrics_loss``) rather than the raw prelogits
        (``facenet``)."""
        return self.form == "metrics_loss"

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, dim={self.dim}, alpha={self.alpha}, form={self.form}"
                + (f", beyond={self.beyond}" if self.beyond != "error" else ""))

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
            if lo < 0 or (hi >= self.num_classes and self.beyond == "error"):
                bad = lo if lo < 0 else hi
                raise ValueError(f"center loss label {bad} out of range [0, {self.num_classes})")

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss with the current (pre-update) centers: ``0.5 * ||e_i - C[y_i]||^2`` (``metrics_loss``) or
        ``mean_d (f_id - C[y_i]_d)^2`` (``facenet``; its batch mean is facenet's ``reduce_mean`` over ``B x D``).

        Args:
            emb (Tensor[B, D]): features: the L2-normalised embeddings (``metrics_loss``) or the raw prelogits
                (``facenet``).
            labels (Tensor[B], int): class indices in ``[0, K)``.

        Returns:
            Tensor[B]: in ``emb``'s dtype; differentiable w.r.t. ``emb`` only.
        """
        self._validate(emb, labels)
        labels = labels.long()
        if self.beyond == "zero":
            inside = (labels < self.num_classes).unsqueeze(1)
            batch_centers = self.centers.index_select(0, labels.clamp(max=self.num_classes - 1)).to(emb.dtype)
            batch_centers = torch.where(inside, batch_centers, torch.zeros_like(batch_centers))
        else:
            batch_centers = self.centers.index_select(0, labels).to(emb.dtype)
        if self.form == "facenet":
            return (emb - batch_centers).pow(2).mean(dim=1)
        return 0.5 * (emb - batch_centers).pow(2).sum(dim=1)

    @torch.no_grad()
    def batch_statistics(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class sums and counts of a batch (detached), to be all-reduced in distributed training.

        Args:
            emb (Tensor[B, D]): the features (as for :meth:`forward`).
            labels (Tensor[B], int): class indices in ``[0, K)``.

        Returns:
            sums (Tensor[K, D]): ``sum_{i: y_i = j} e_i``, in the centers' dtype and device.
            counts (Tensor[K]): ``n_j`` (exact small integers, stored in the centers' dtype).
        """
        self._validate(emb, labels)
        idx = labels.to(device=self.centers.device, dtype=torch.long)
        values = emb.detach().to(device=self.centers.device, dtype=self.centers.dtype)
        if self.beyond == "zero":
            inside = idx < self.num_classes
            idx, values = idx[inside], values[inside]
        sums = torch.zeros_like(self.centers).index_add_(0, idx, values)
        counts = self.centers.new_zeros(self.num_classes).index_add_(0, idx, self.centers.new_ones(idx.shape[0]))
        return sums, counts

    @torch.no_grad()
    def apply_update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """For every ``j`` with ``counts[j] > 0``: ``C[j] <- C[j] - (1 - alpha) * (C[j] - sums[j] / counts[j])``
        (``metrics_loss``) or ``C[j] <- C[j] - (1 - alpha) * (counts[j] * C[j] - sums[j])`` (``facenet``: the sum of
        its per-sample updates).

        Args:
            sums (Tensor[K, D]): per-class feature sums (possibly summed over ranks).
            counts (Tensor[K]): per-class sample counts (possibly summed over ranks).
        """
        if sums.shape != self.centers.shape or counts.shape != (self.num_classes,):
            raise ValueError(f"expected sums {tuple(self.centers.shape)} and counts ({self.num_classes},), "
                             f"got {tuple(sums.shape)} and {tuple(counts.shape)}")
        sums = sums.to(self.centers)
        counts = counts.to(self.centers)
        present = (counts > 0).unsqueeze(1)
        if self.form == "facenet":
            delta = (1.0 - self.alpha) * (counts.unsqueeze(1) * self.centers - sums)
        else:
            means = sums / counts.clamp(min=1).unsqueeze(1)
            delta = (1.0 - self.alpha) * (self.centers - means)
        self.centers.sub_(torch.where(present, delta, torch.zeros_like(delta)))

    @torch.no_grad()
    def update(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        """Move the centers of the classes in the batch (single process; see :meth:`apply_update`)."""
        self.apply_update(*self.batch_statistics(emb, labels))
