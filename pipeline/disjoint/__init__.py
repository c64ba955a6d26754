"""Multi-task learning on disjoint datasets (SA-MTL, docs/disjoint.md): knowledge transfer between sources that each
label one task (distillation targets, pseudo labels and their weights, their selection) and the per-source samplers.

Torch, numpy and scikit-learn only; the fine-tuning loop of :mod:`pipeline.training` runs what this package builds.
"""
