"""The caricature runs' center policy (``cari.common.centers``; docs/caricature.md, docs/method.md §2.2, §9.17, §9.22).

A task set says per task whether it has a center term and whose matrix it uses (:class:`~pipeline.settings.TaskCenter`:
``embedding``, ``matrix``, ``updates``). The caricature runs choose among the original code's, the paper's and our
arrangement with three settings instead, which :func:`apply_center_policy` turns into the task set's ``center``
blocks:

- ``per_branch`` (our default): every listed task owns a matrix of its classes, pulled toward its own embeddings and
  moved by its own batch means;
- ``shared_b1`` (the original code): one matrix, owned by the first task (BRANCH 1) and moved only by its update;
  the other listed tasks pull their **own** branch's embeddings toward it and never move it (their update ops were
  built but not run);
- ``tasks``: which tasks have a term (the code: all three; the paper: the verification task only).

``factor`` and ``alpha`` come from the first task's block for every listed task.
"""

from __future__ import annotations

import dataclasses

from pipeline.settings import OWN, CenterPolicySettings, TaskSetSettings

__all__ = ["apply_center_policy"]


def apply_center_policy(tasks: TaskSetSettings, policy: CenterPolicySettings) -> TaskSetSettings:
    """``tasks`` with its ``center`` blocks rewritten by ``policy`` (module docstring).

    Raises:
        ValueError: ``policy.tasks`` names a task outside the set, the first task has no center block (it gives
            ``factor`` and ``alpha``), or ``shared_b1`` does not list the first task (whose matrix is shared).
    """
    first = tasks.names[0]
    unknown = [t for t in policy.tasks if t not in tasks.tasks]
    if unknown:
        raise ValueError(f"centers.tasks: {unknown} are not tasks of the set ({', '.join(tasks.names)})")
    base = tasks.tasks[first].center
    if base is None:
        raise ValueError(f"the first task {first!r} has no center block: it gives factor and alpha to every center")
    if policy.policy == "shared_b1" and first not in policy.tasks:
        raise ValueError(f"centers.tasks: shared_b1 shares the matrix of {first!r}, which must be listed")
    rewritten = {}
    for name, task in tasks.tasks.items():
        if name not in policy.tasks:
            center = None
        elif policy.policy == "per_branch" or name == first:
            center = dataclasses.replace(base, embedding=OWN, matrix=OWN, updates=True)
        else:
            center = dataclasses.replace(base, embedding=OWN, matrix=first, updates=False)
        rewritten[name] = dataclasses.replace(task, center=center)
    return dataclasses.replace(tasks, tasks=rewritten)
