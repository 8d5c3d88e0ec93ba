"""Model architectures, selected by name. Add one with :func:`register`.

Every model takes float32 (N, 48, 48, 1) pixels in 0-255 (it rescales them itself) and returns
class probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MODEL = "vgg_mid"

#: The architectures of ``architectures.py``, named without importing Keras (for the CLI's help).
BUILT_IN_MODELS = ("vgg_mid", "vgg_wide", "vgg_mid320", "vgg_mid_fc", "res_mid", "vgg_lite", "vgg_small", "seed_cnn")


@dataclass(frozen=True)
class ModelSpec:
    """A builder ``(input_size, n_classes) -> keras.Model`` and its optimiser defaults.

    ``schedule`` is ``"plateau"`` (divide the rate by ``1/lr_factor`` after ``lr_patience`` epochs
    without a better validation loss) or ``"cosine"`` (decay from ``learning_rate`` to zero over the
    training's epochs, a function of the epoch alone).
    """

    build: Callable
    learning_rate: float
    lr_factor: float
    lr_patience: int
    schedule: str = "plateau"
    any_size: bool = True  # the builder accepts input_size None (global pooling): it can train on crops
    #: how much the network downsamples a face in total (three 2x2 poolings: 8). A training crop must differ
    #: from the input size by a multiple of it, or the poolings floor crops and whole faces differently
    #: (README run AF: trained on 36 px crops, ``vgg_mid`` scored 0.52 on whole 48 px faces).
    stride: int = 8


MODELS: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    learning_rate: float = 1e-3,
    lr_factor: float = 0.5,
    lr_patience: int = 3,
    schedule: str = "plateau",
    any_size: bool = True,
    stride: int = 8,
):
    """Decorator adding a model builder and its optimiser defaults to the registry."""
    if schedule not in ("plateau", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")

    def wrap(builder: Callable) -> Callable:
        MODELS[name] = ModelSpec(builder, learning_rate, lr_factor, lr_patience, schedule, any_size, stride)
        return builder

    return wrap


def model_spec(name: str) -> ModelSpec:
    """The named model's spec; raises ValueError listing the known names."""
    from . import architectures  # noqa: F401  (registers the built-in models)

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(name: str, input_size: int, n_classes: int):
    """Build the named model; raises ValueError listing the known names."""
    return model_spec(name).build(input_size, n_classes)


def model_names() -> list[str]:
    from . import architectures  # noqa: F401

    return sorted(MODELS)


def architecture_fingerprint(name: str) -> str:
    """A hash of the source of model ``name``'s builder and of the module's functions it calls:
    changes when that code changes, not when another model of the module is added or edited."""
    import hashlib
    import inspect

    build = model_spec(name).build
    module = inspect.getmodule(build)
    sources, seen, todo = [], set(), [build]
    while todo:
        function = todo.pop()
        if function.__name__ in seen:
            continue
        seen.add(function.__name__)
        sources.append(inspect.getsource(function))
        for called in function.__code__.co_names:
            target = getattr(module, called, None)
            if inspect.isfunction(target) and target.__module__ == module.__name__:
                todo.append(target)
    return hashlib.sha256("".join(sources).encode()).hexdigest()[:12]


def with_flip_average(net):
    """``net`` wrapped so that it returns the mean of its probabilities for each face and for the
    face mirrored left to right (test-time flip averaging inside the model, so every consumer of
    the saved model gets it). The mirror is an exact, fixed permutation of the width axis built
    from standard layers (a frozen 0/1 ``Dense``), so the model loads with ``safe_mode``."""
    import keras
    import numpy as np
    from keras import layers

    _, height, width, channels = net.input_shape
    if channels != 1 or not height or not width:
        raise ValueError(f"flip averaging needs fixed-size grayscale input, got {net.input_shape}")
    inputs = keras.Input((height, width, 1), name="face")
    rows = layers.Reshape((height, width), name="rows")(inputs)
    mirror = layers.Dense(width, use_bias=False, trainable=False, name="mirror")
    mirrored = layers.Reshape((height, width, 1), name="mirrored")(mirror(rows))
    mirror.set_weights([np.eye(width, dtype="float32")[::-1]])
    outputs = layers.Average(name="flip_average")([net(inputs), net(mirrored)])
    return keras.Model(inputs, outputs, name=f"{net.name}_flip_average")


def average_of(nets: list, name: str = "ensemble"):
    """One model returning the mean of ``nets``' probabilities for each face (an ensemble that
    every consumer of the saved model runs as one network). The nets must take the same input and
    return the same classes; each is kept as a sub-model named ``member_<i>_<its name>``, so two
    nets of one architecture can be averaged, and the whole loads with ``safe_mode``."""
    import keras

    if len(nets) < 2:
        raise ValueError(f"an average needs at least two networks, got {len(nets)}")
    shapes = {(tuple(net.input_shape[1:]), net.output_shape[-1]) for net in nets}
    if len(shapes) != 1:
        raise ValueError(f"averaged networks must share input and classes, got {sorted(shapes)}")
    inputs = keras.Input(nets[0].input_shape[1:], name="face")
    members = [
        keras.Model(net.inputs[0], net.outputs[0], name=f"member_{i}_{net.name}") for i, net in enumerate(nets, 1)
    ]
    outputs = keras.layers.Average(name="ensemble_average")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=name)


#: The variance (in squared 0-1 pixel units, ~5 grey levels of standard deviation) below which
#: :func:`with_standardized_faces` stops stretching a face's contrast: a flat crop is not amplified into noise.
STANDARDIZE_EPSILON = 4e-4


def with_standardized_faces(net):
    """A copy of ``net`` (same layer names and weights) whose ``rescale`` layer also standardizes
    each face: minus its own mean pixel, over its own standard deviation (per-image contrast
    normalization, in float32), so the network sees every face at one brightness and contrast.
    Built from Keras's own layers (``Rescaling`` then a ``LayerNormalization`` over height, width and
    channel, without learned scale or offset), so the saved model loads with ``safe_mode``. README run
    AC: 0.6 points under the plain network on FER2013's public_test, so off in every preset."""
    import keras
    from keras import layers

    if "rescale" not in [layer.name for layer in net.layers]:
        raise ValueError(f"{net.name} has no 'rescale' layer to standardize its faces after")

    def standardize(layer):
        if layer.name != "rescale":
            return None
        return keras.Sequential(
            [
                layers.Rescaling(1.0 / 255),
                layers.LayerNormalization(
                    axis=[1, 2, 3], epsilon=STANDARDIZE_EPSILON, center=False, scale=False, dtype="float32"
                ),
            ],
            name="rescale_standardize",
        )

    return clone_replacing(net, standardize)


def clone_replacing(net, replacement: Callable):
    """A copy of the functional ``net`` with its weights: each layer rebuilt from its configuration,
    or swapped for ``replacement(layer)`` where that returns a layer (one with the same weights, or none)."""
    import keras

    def clone(layer):
        swapped = replacement(layer)
        return layer.__class__.from_config(layer.get_config()) if swapped is None else swapped

    copy = keras.models.clone_model(net, clone_function=clone)
    copy.set_weights(net.get_weights())
    return copy
