"""The paper's network: a multi-task Inception-ResNet-v1 (:mod:`~pipeline.models.network`) and its checkpoints
(:mod:`~pipeline.models.checkpoint`)."""
