"""Evaluation protocols (docs/method.md §6): pair verification, classification, identification.

- :mod:`~pipeline.evaluation.verification`: k-fold verification accuracy, VAL@FAR, AUC/EER, in ``clean`` or
  ``faithful`` mode;
- :mod:`~pipeline.evaluation.roc`: AUC and EER of a distance ROC;
- :mod:`~pipeline.evaluation.classification`: accuracy, per-class accuracy, row-normalised confusion matrix;
- :mod:`~pipeline.evaluation.identification`: Rank-1 / Rank-k over splits.

Plain NumPy (and scikit-learn) in, typed results with ``to_dict()`` out; nothing here reads files or logs metrics.
"""

from pipeline.evaluation.checks import EvaluationInputError
from pipeline.evaluation.classification import ClassificationResult, evaluate_classification, predict
from pipeline.evaluation.identification import IdentificationResult, evaluate_identification, first_hit_rank
from pipeline.evaluation.verification import (
    MODES,
    ValAtFar,
    VerificationResult,
    evaluate_distances,
    evaluate_verification,
    squared_distances,
)

__all__ = [
    "ClassificationResult",
    "MODES",
    "EvaluationInputError",
    "IdentificationResult",
    "ValAtFar",
    "VerificationResult",
    "evaluate_classification",
    "evaluate_distances",
    "evaluate_identification",
    "evaluate_verification",
    "first_hit_rank",
    "predict",
    "squared_distances",
]
