"""Initialising a model from a pretrained checkpoint: one of ours (``model.pt``) or a facenet-pytorch state dict."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.models.checkpoint import CheckpointError, checked_checkpoint, load_file
from pipeline.models.facenet_import import import_facenet, is_facenet_state_dict
from pipeline.models.network import ModelConfig, MultiTaskInceptionResNetV1

__all__ = ["load_pretrained"]


def load_pretrained(model: MultiTaskInceptionResNetV1, path: str, config: ModelConfig) -> None:
    """Trunk + first branch (not its classifier) from ``path``: one of our checkpoints, else a facenet-pytorch
    state dict. The checkpoint's first branch goes into ``config``'s first branch whatever the two are named (a
    pretrained ``identity`` branch becomes a caricature set's ``verification`` branch). Raises
    :class:`~pipeline.models.checkpoint.CheckpointError` when it does not fit ``config``."""
    loaded = load_file(path)  # once: either kind
    if isinstance(loaded, Mapping) and is_facenet_state_dict(loaded):
        import_facenet(loaded, model, source=str(path))
        return
    checkpoint = checked_checkpoint(loaded, path)
    src = checkpoint["model"]
    own = model.state_dict()
    theirs = f"branches.{checkpoint['config']['heads'][0]['name']}."
    ours = f"branches.{config.heads[0].name}."
    renamed = {(ours + k[len(theirs):] if k.startswith(theirs) else k): v for k, v in src.items()}
    take = {k: v for k, v in renamed.items()
            if k in own and own[k].shape == v.shape
            and (k.startswith("trunk.") or (k.startswith(ours) and ".logits." not in k and ".hidden." not in k))}
    missing = [k for k in own if k.startswith("trunk.") and k not in take]
    if missing:
        raise CheckpointError(f"checkpoint {path} does not fit this model: trunk weights missing or of "
                              f"another shape, e.g. {missing[0]} (depth {config.network.depth}?)")
    model.load_state_dict(take, strict=False)
