"""MLflow glue shared by the training flow, ``emotion evaluate`` and the realtime client:
tracking setup, run logging, registration with champion/challenger aliases, and loading a
registered model (with its label set) through a local cache. Imports no Prefect."""

from .loading import (
    DEFAULT_MODEL_URIS,
    LoadedModel,
    ModelLoadError,
    ModelNotRegistered,
    load_first,
    load_model,
    parse_model_uri,
)
from .tracking import TrackingUnavailable, configure, default_tracking_uri, ensure_experiment

__all__ = [
    "DEFAULT_MODEL_URIS",
    "LoadedModel",
    "ModelLoadError",
    "ModelNotRegistered",
    "TrackingUnavailable",
    "configure",
    "default_tracking_uri",
    "ensure_experiment",
    "load_first",
    "load_model",
    "parse_model_uri",
]
