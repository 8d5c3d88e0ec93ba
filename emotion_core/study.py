"""The Optuna side of a sweep: storage, sampler and pruner from a search space, trial accounting,
retrying interrupted trials, and the Keras callback that reports epochs and asks the pruner.

Optuna decides everything a search decides (what to try next, what to prune, what retrying a
trial means); this module only wires it to the project's training loop and data directory.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .sweep_space import SearchSpace, SpaceError

warnings.filterwarnings("ignore", category=ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

#: Retries of one trial killed mid-way (with its sweep) before it counts as failed.
MAX_RETRIES = 3
_retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def default_storage(data_dir: str | Path) -> str:
    """The study database of a data directory: SQLite under ``<data_dir>/sweeps``."""
    path = Path(data_dir).resolve() / "sweeps" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; SQLite waits for the other trial processes' writes."""
    if url.startswith("sqlite:"):
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    spec = {k: v for k, v in space.sampler.items() if k != "type"}
    kinds = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    return _construct(kinds[space.sampler["type"]], spec, "sampler", space)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    spec = {k: v for k, v in space.pruner.items() if k != "type"}
    kinds = {
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    return _construct(kinds[space.pruner["type"]], spec, "pruner", space)


def _construct(cls, kwargs: dict, key: str, space: SearchSpace):
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"{space.source}: {key}: {exc}") from None


def check_space(space: SearchSpace) -> None:
    """Raise :class:`SpaceError` (naming the key) if the sampler or pruner cannot be built."""
    make_sampler(space)
    make_pruner(space)


def open_study(space: SearchSpace, name: str, storage: str, *, create: bool) -> optuna.Study:
    """The study ``name`` in ``storage``, created (with the space's queued trials) when ``create``."""
    store = open_storage(storage)
    sampler, pruner = make_sampler(space), make_pruner(space)
    if not create:
        return optuna.load_study(study_name=name, storage=store, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name, storage=store, sampler=sampler, pruner=pruner, direction=space.direction, load_if_exists=True
    )
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", space.as_dict())
        for params in baseline_params(space):
            study.enqueue_trial(params)
    elif recorded != space.as_dict():
        raise SpaceError(
            f"study {name!r} was started with another search space; give a new --study name "
            "(or the space it was started with)"
        )
    return study


def baseline_params(space: SearchSpace) -> list[dict]:
    """The space's ``enqueue`` trials, each completed with the preset's own value of every searched
    param the entry leaves out (where the space contains that value), so ``{}`` is the preset."""
    base = space.config({})
    out = []
    for entry in space.enqueue:
        params = dict(entry)
        for p in space.params:
            value = getattr(base, p.name)
            if p.fixed or p.name in params:
                continue
            if p.contains(value):
                params[p.name] = value
        out.append(params)
    return out


def _retry_history(trial) -> list[int]:
    with warnings.catch_warnings():  # Optuna marks it experimental
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _retry.retry_history(trial)


def retried_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the trials that were interrupted and queued again (each retry names its originals)."""
    return {n for t in study.get_trials(deepcopy=False) for n in _retry_history(t)}


def original_number(trial) -> int:
    """The number of the first try of ``trial`` (itself unless it retries an interrupted one)."""
    history = _retry_history(trial) if hasattr(trial, "system_attrs") else []
    return history[0] if history else trial.number


def counted_trials(study: optuna.Study) -> list:
    """The trials that count towards ``--trials``: started ones, less the interrupted tries that were retried."""
    retried = retried_numbers(study)
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING and t.number not in retried]


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Fail every RUNNING trial (the caller holds the data-directory lock, so none is live: they were
    killed with an earlier sweep) and queue each again with the same params and attributes."""
    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in interrupted:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        _retry(study, study.get_trials(deepcopy=False)[trial.number])
    return [t.number for t in interrupted]


def trial_by_id(study: optuna.Study, number: int) -> optuna.trial.Trial:
    """A live :class:`optuna.trial.Trial` for trial ``number`` (in a worker process)."""
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


def make_pruning_reporter(trial: optuna.trial.Trial, objective: str, past: dict[str, list[float]]):
    """A Keras callback reporting ``objective`` after every epoch and stopping the fit when
    Optuna's pruner says so; epochs of an earlier, interrupted try (``past``) are reported first.

    An epoch whose training loss is not finite (the recipe diverged) reports NaN instead of a
    meaningless score from NaN weights: Optuna's threshold pruner prunes it at once, successive
    halving and Hyperband at the trial's next rung, median and percentile once past their warm-up
    if no epoch of the trial scored (they compare a trial's best epoch)."""
    import keras

    class PruningReporter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.pruned_at: int | None = None
            losses = past.get("loss", [])
            for epoch, value in enumerate(past.get(objective, [])):
                self._report(value, epoch, diverged=epoch < len(losses) and not math.isfinite(losses[epoch]))

        def _report(self, value: float | None, epoch: int, diverged: bool = False) -> None:
            if diverged:
                value = math.nan
            elif value is None or math.isnan(value):  # not recorded for that epoch
                return
            with warnings.catch_warnings():  # a step reported before (a resumed try) is ignored
                warnings.simplefilter("ignore", UserWarning)
                trial.report(float(value), epoch + 1)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            value = logs.get(objective)
            if value is None:
                return
            self._report(float(value), epoch, diverged=not math.isfinite(logs.get("loss", 0.0)))
            if trial.should_prune():
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return PruningReporter()
