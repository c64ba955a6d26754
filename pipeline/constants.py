"""Names shared by the params schema (:mod:`pipeline.config`) and the data code, importable without either.

Standard library only, so that validating ``params.yaml`` does not import the demo generator or the manifest code
(and the code deps of the stages past ``manifest`` stay free of them).
"""

from __future__ import annotations

__all__ = ["DEMO_EXPRESSIONS", "LABEL_COLUMNS", "MODALITY_LABELS"]

#: the columns of the manifest a task's ``label`` may name directly (class index = the value; ``is_caricature``:
#: 0 photo, 1 caricature); any other label is a label set of the dataset
LABEL_COLUMNS: tuple[str, ...] = ("identity", "is_caricature")

#: labels a task may name that are ``identity`` restricted to one modality (the ``is_caricature`` value): the
#: caricature model's visual (photos) and caricature (caricatures) identification tasks (docs/method.md §1.4)
MODALITY_LABELS: dict[str, int] = {"identity_photos": 0, "identity_caricatures": 1}

#: the six basic expressions the demo generator draws (:mod:`pipeline.data.demo`), in Oulu-CASIA's folder spelling
DEMO_EXPRESSIONS: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
