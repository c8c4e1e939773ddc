"""Scoring: AMR-SD's pipeline over one engine (docs/method.md).

    plan.py      a request checked and planned per rollout, before any engine work
    reflect.py   reflections written, filtered and cached
    passes.py    the teacher-forced passes, the score cache, coalescing across groups
    combine.py   CIG, gate and advantages per rollout (pure)
    stats.py     batch statistics, summed once (the scorer and `amr-sd score`)
    pipeline.py  `Scorer`: the phases in order, all of a request's engine work in flight at once
"""

from amr_sd.scoring.pipeline import Scorer

__all__ = ["Scorer"]
