"""Learning-rate schedules as a factor of the base lr per optimizer step, with linear warm-up.

    multistep: gamma ** (number of milestones passed)      (the old repository's, milestones in epochs)
    cosine:    0.5 * (1 + cos(pi * progress))
    poly:      (1 - progress) ** power                    (insightface arcface_torch's)
progress runs from 0 after warm-up to 1 at the last step. Warm-up rises linearly from 0 to 1 over
`warmup_steps`, then hands over to the schedule (which starts counting after warm-up for cosine/poly).
"""

import bisect
import math

SCHEDULES = ("multistep", "cosine", "poly")


def lr_factor(step: int, schedule: str, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0,
              milestones=(), gamma: float = 0.1, power: float = 2.0) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "multistep":
        return gamma ** bisect.bisect_right([m * steps_per_epoch for m in milestones], step)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** power
    raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
