"""Is the run learning? A contrastive loss that stays at ln(batch size) means the model still ranks every
negative like the positive: the collapsed start. Pure functions of the logged losses."""

from __future__ import annotations

import math

CHECK_AT = 0.5  # fraction of the run at which a run still at the start is warned about
BAND = 0.02  # "at the start": loss >= (1 - BAND) * ln(batch)
WINDOW = 20  # steps averaged

FIXES = ("--lr 1e-3 for towers trained from scratch (1e-4 suits pretrained ones), --text-view span or report "
         "(one sentence may not carry the finding), more steps (--epochs, --min-steps), or a smaller --batch-size "
         "when reports repeat")


def check_step(total_steps: int) -> int:
    return max(1, math.ceil(CHECK_AT * total_steps))


def at_start(losses: list[float], batch: int) -> tuple[bool, float, float]:
    """(still at the collapsed start?, mean of the last WINDOW losses, ln(batch))."""
    ln_b = math.log(batch)
    recent = losses[-WINDOW:]
    mean = sum(recent) / len(recent) if recent else float("nan")
    return mean >= (1 - BAND) * ln_b, mean, ln_b


def val_learning(val: dict | None, factor: float = 1.5) -> bool:
    """Validation retrieval clearly above chance: the ranking improves even while the loss looks flat."""
    return bool(val) and val.get("val_i2t_r5", 0.0) > factor * val.get("val_r5_chance", 1.0)


def warning(step: int, total: int, mean: float, ln_b: float, batch: int) -> str:
    return (f"the loss is still {mean:.3f}, within {BAND:.0%} of ln({batch}) = {ln_b:.3f}, {step / total:.0%} into "
            f"the run (step {step} of {total}): the model is not learning. Likely fixes: {FIXES}")


def verdict(losses: list[float], batch: int, warned_at: dict | None, val: dict | None) -> dict:
    """What summary.json records: whether the run left the start by its end (loss, or val retrieval above chance)."""
    stuck, mean, ln_b = at_start(losses, batch)
    collapsed = stuck and not val_learning(val, 2.0)
    out = {"ln_batch": round(ln_b, 4), "final_loss": round(mean, 4), "band": BAND, "collapsed": collapsed,
           "warned": warned_at}
    if collapsed:
        val_says = ("validation retrieval is at chance" if val and "val_i2t_r5" in val else
                    "no validation retrieval was measured to show otherwise")
        out["message"] = (f"its loss ended at {mean:.3f}, within {BAND:.0%} of ln({batch}) = {ln_b:.3f}, and "
                          f"{val_says}. Likely fixes: {FIXES}")
    return out
