"""Time budgets for training: the first epoch is timed on the machine at hand, and the schedule's
length is then fixed so the command ends within its budget (never more epochs than asked for).
The epochs after it are costed at the first epoch's steady pace: its first steps (tracing the step
function, filling the input pipeline) cost more than any later step, and would cut the schedule
by up to a third (measured: a 37 s first epoch of 28 s ones).

The learning rate of the first epoch (the warm-up) does not depend on the schedule's length, so a
training that planned ``N`` epochs is, weight for weight, the training of ``--epochs N``; the plan
is written to the training's work folder before its first checkpoint, and a resumed training
follows it instead of planning again.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .imageio import atomic_write

PLAN_NAME = "plan.json"

#: Seconds kept back for what follows the last epoch: saving the model, scoring the test split,
#: logging and registering it (measured 28 s for FER2013 on 2 cores of a Xeon with AMX-BF16).
FINISH_RESERVE_S = 120.0
#: Steps at the start of the first epoch left out of its steady pace, and the fewest steps after
#: them that the pace is read from (a shorter epoch is costed at its whole duration).
WARM_UP_STEPS = 10
PACED_STEPS = 20


@dataclass(frozen=True)
class TimeBudget:
    """A budget of ``minutes`` counted from ``started_at`` (``clock()`` time: the start of the
    command that trains, so earlier pipeline stages count against it)."""

    minutes: float
    started_at: float = field(default_factory=time.time)
    clock: Callable[[], float] = time.time

    @property
    def deadline(self) -> float:
        return self.started_at + 60.0 * self.minutes


def plan_epochs(cap: int, epoch_seconds: float, seconds_left: float, reserve: float = FINISH_RESERVE_S) -> int:
    """How many epochs (1 to ``cap``) to train, one of them already run: as many more as fit in
    ``seconds_left`` less ``reserve`` at ``epoch_seconds`` each."""
    more = int(max(0.0, seconds_left - reserve) // max(epoch_seconds, 1e-9))
    return max(1, min(cap, 1 + more))


def steady_epoch_seconds(
    whole: float, steps: int | None, warm: tuple[int, float] | None, last: tuple[int, float] | None
) -> float:
    """The cost of an epoch after the first: ``whole`` (the first epoch, start to end, validation
    included) less its warm-up. ``warm`` and ``last`` are ``(steps done, seconds since the epoch
    began)`` after the warm-up steps and after the last step; the steps between them set the pace
    of all ``steps``, and what followed the last step (validation) is added as it was."""
    if not steps or warm is None or last is None or last[0] - warm[0] < PACED_STEPS:
        return whole
    pace = (last[1] - warm[1]) / (last[0] - warm[0])
    return min(whole, pace * steps + (whole - last[1]))


def read_plan(work_dir: str | Path) -> dict | None:
    """A training's saved plan (``epochs``, the timing it was planned from), or None."""
    try:
        return json.loads((Path(work_dir) / PLAN_NAME).read_text())
    except (OSError, ValueError):
        return None


def plan_summary(plan: dict) -> str:
    """One line on what a time budget planned (a :func:`read_plan` dict)."""
    epochs = f"{plan['epochs']} epoch{'' if plan['epochs'] == 1 else 's'}"
    cut = "" if plan["epochs"] >= plan["cap"] else f" (cut from {plan['cap']})"
    pace = plan.get("epoch_seconds", plan["first_epoch_seconds"])
    return (
        f"{epochs}{cut} planned for {plan['budget_minutes']:g} min: {pace:.0f} s an epoch (the first "
        f"{plan['first_epoch_seconds']:.0f} s) after {plan['minutes_spent_before_training']:.1f} min of earlier work"
    )


def epoch_planner(work_dir: str | Path, cap: int, budget: TimeBudget | None):
    """A Keras callback that plans the schedule's length (``.epochs``) at the end of the first epoch
    and stops the training there; see :func:`_planner_class`."""
    return _planner_class()(Path(work_dir), cap, budget)


@functools.cache
def _planner_class():
    import keras

    class EpochPlanner(keras.callbacks.Callback):
        """Holds the schedule's length: ``cap`` without a budget, the saved plan when there is
        one, else planned from the first epoch's steady pace (:func:`steady_epoch_seconds`) when
        that epoch ends (before the epoch checkpoint is written, so a checkpoint past epoch 1
        always has its plan next to it)."""

        def __init__(self, work_dir: Path, cap: int, budget: TimeBudget | None):
            super().__init__()
            self.path, self.cap, self.budget = work_dir / PLAN_NAME, cap, budget
            self.plan = read_plan(work_dir) if budget else None
            self.epochs = min(cap, int(self.plan["epochs"])) if self.plan else cap
            self._began = None
            self._epoch, self._warm, self._last = 0, None, None

        def _planning(self, epoch: int) -> bool:
            return self.budget is not None and self.plan is None and epoch == 0

        def on_epoch_begin(self, epoch, logs=None):
            if self.budget is not None:
                self._began = self.budget.clock()
                self._epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self._planning(self._epoch) and self._began is not None:
                done = (batch + 1, self.budget.clock() - self._began)
                self._last = done
                if batch + 1 == WARM_UP_STEPS:
                    self._warm = done

        def on_epoch_end(self, epoch, logs=None):
            if self._planning(epoch) and self._began is not None:
                now = self.budget.clock()
                seconds = now - self._began
                pace = steady_epoch_seconds(seconds, self.params.get("steps"), self._warm, self._last)
                self.epochs = plan_epochs(self.cap, pace, self.budget.deadline - now)
                self.plan = {
                    "epochs": self.epochs,
                    "cap": self.cap,
                    "budget_minutes": self.budget.minutes,
                    "first_epoch_seconds": round(seconds, 3),
                    "epoch_seconds": round(pace, 3),
                    "minutes_spent_before_training": round((self._began - self.budget.started_at) / 60.0, 2),
                    "reserve_seconds": FINISH_RESERVE_S,
                }
                atomic_write(self.path, json.dumps(self.plan).encode(), durable=True)
            if epoch + 1 >= self.epochs and self.epochs < self.cap:
                self.model.stop_training = True

    return EpochPlanner
