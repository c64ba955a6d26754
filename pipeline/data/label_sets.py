"""Frame-level expression labels from a manifest and a label set (``params.yaml`` ``label_sets``).

The manifest keeps every frame a label set may need, with the sequence's (peak) expression on each row. A label
set turns that into per-image labels, as the original protocol files do (docs/method.md §5.1, §5.2):

- the last ``peak_frames`` frames of a sequence get the sequence's expression;
- the first ``neutral_frames`` frames get the ``neutral`` class;
- only sequences whose expression is one of ``classes`` contribute (CK+'s unlabelled sequences give nothing);
- a frame that is both (a sequence shorter than ``peak_frames + neutral_frames``) counts as peak.

Oulu "Six" = 3 peak frames, no neutral (1440 images); Oulu "Seven" = 3 peak + 1 neutral (1920);
CK+ 8 classes = 3 peak + 1 neutral over the 327 labelled sequences (1308).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import LabelSetConfig

__all__ = ["apply_label_set"]


def apply_label_set(manifest: pd.DataFrame, label_set: LabelSetConfig) -> pd.DataFrame:
    """Rows of ``manifest`` that carry a label, with two added columns.

    Args:
        manifest: a manifest (:mod:`pipeline.data.manifest`); needs ``expression``, ``frame``, ``n_frames``.
        label_set: the label set.

    Returns:
        A copy of the labelled rows (original order) plus ``label`` (int64, index into ``label_set.classes``) and
        ``label_name`` (str).
    """
    index = {name: i for i, name in enumerate(label_set.classes)}
    expr = manifest["expression"].astype("object")
    in_set = expr.map(lambda e: e in index if isinstance(e, str) else False).to_numpy(dtype=bool)
    frame = manifest["frame"].to_numpy(dtype=np.int64)
    n_frames = manifest["n_frames"].to_numpy(dtype=np.int64)
    peak = in_set & (frame >= n_frames - label_set.peak_frames)
    neutral = in_set & ~peak & (frame < label_set.neutral_frames)
    keep = peak | neutral
    out = manifest.loc[keep].copy()
    names = np.where(peak[keep], expr[keep].to_numpy(), label_set.neutral)
    out["label_name"] = names.astype(str)
    out["label"] = np.array([index[n] for n in out["label_name"]], dtype=np.int64)
    return out
