"""The raw-pixel PCA baseline on a split's data, evaluated like a trained model: one function for the FR+FER folds
(stage ``pixel_baseline``) and the caricature splits (stage ``cari_pixel``).

The L2-normalised PCA projection is the embedding of every task; each classification task's scores come from a
logistic regression on the training projections of its labelled images (:func:`pipeline.evaluation.pixel_pca.
fit_predict`); :func:`pipeline.training.evaluate.evaluate` then measures them as it measures a network.
"""

from __future__ import annotations

from typing import Any

from pipeline.evaluation.pixel_pca import PixelPCA, PixelPCASettings, fit_predict
from pipeline.settings import ProtocolSettings, TaskSetSettings
from pipeline.training.evaluate import Predictions, evaluate, evaluations_of
from pipeline.training.fold_data import FoldData

__all__ = ["evaluate_pixel_baseline"]


def evaluate_pixel_baseline(data: FoldData, tasks: TaskSetSettings, settings: PixelPCASettings, *,
                            protocol: ProtocolSettings, seed: int) -> tuple[dict[str, Any], dict[str, Any], PixelPCA]:
    """Fit the baseline on ``data.train`` for ``tasks`` and evaluate it on ``data.test``.

    Returns:
        ``(M, scores, model)``: the metrics of :func:`~pipeline.training.evaluate.evaluate`, its raw scores and the
        fitted :class:`~pipeline.evaluation.pixel_pca.PixelPCA`.

    Raises:
        ValueError: the baseline cannot be fitted (:func:`~pipeline.evaluation.pixel_pca.fit_predict`).
    """
    labels = {t: (data.train.labels[t].cpu().numpy(), data.n_classes[t]) for t in tasks.evaluated("classification")}
    model, embedding, logits = fit_predict(settings, data.train.images.cpu().numpy(), labels,
                                           data.test.images.cpu().numpy())
    pred = Predictions(embeddings={t: embedding for t in tasks.names}, logits=logits)
    m, scores = evaluate(pred, data.test, evaluations_of(tasks), protocol=protocol, seed=seed)
    return m, scores, model
