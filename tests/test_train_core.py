"""Training library tests: metrics, packing, models, the train loop, resume and the inference guard."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest

from emotion_core.dataset import PackedFaces, class_weights, pack_faces, preprocess_face
from emotion_core.evaluate import compute_metrics, predict_probs
from emotion_core.imageio import ImageError
from emotion_core.manifest import from_records
from emotion_core.models import build_model, model_names
from emotion_core.train import (
    PRESET_BUDGETS,
    PRESETS,
    EmptyTrainingData,
    TrainConfig,
    check_trainable,
    cosine_rate,
    train,
)


def test_compute_metrics_against_hand_counts():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    m = compute_metrics(y_true, y_pred, ("a", "b", "c"))
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.per_class_recall == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    # F1: a = 2*(2/3*2/3)/(4/3) = 2/3; b = 2*(2/3*1)/(5/3) = 0.8; c = 0
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert m.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert "macro-F1" in m.report()


def test_metrics_score_only_the_classes_present_in_the_data():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 2, 1, 1])  # class c has no samples, but is predicted once
    m = compute_metrics(y_true, y_pred, ("a", "b", "c"))
    assert m.per_class_recall == pytest.approx({"a": 0.5, "b": 1.0})
    assert m.labels_without_samples == ("c",) and m.as_dict()["labels_without_samples"] == ["c"]
    assert m.macro_f1 == pytest.approx((2 / 3 + 1.0) / 2)  # a: p 1, r 1/2; b: p 1, r 1
    report = m.report()
    assert "model classes with no samples here (not scored): c" in report
    assert not any(line.startswith("c ") for line in report.splitlines())


def test_class_weights_balance_rare_classes():
    w = class_weights(np.array([0] * 90 + [1] * 10), 3)
    assert w[1] == pytest.approx(9 * w[0]) and w[2] == 1.0
    soft = class_weights(np.array([0] * 90 + [1] * 10), 3, power=0.5)
    assert soft[1] == pytest.approx(3 * soft[0]) and soft[1] == pytest.approx(w[1] ** 0.5)


def test_cosine_rate_warms_up_then_decays_to_two_percent():
    rates = [cosine_rate(e, base=1e-3, epochs=26) for e in range(26)]
    assert rates[0] == pytest.approx(5e-4) and rates[1] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(rates[1:], rates[2:], strict=False))
    assert rates[-1] == pytest.approx(2e-5)


def test_preprocess_face_sizes_and_colour():
    assert preprocess_face(np.zeros((120, 90), np.uint8)).shape == (48, 48)
    assert preprocess_face(np.zeros((20, 20, 3), np.uint8)).shape == (48, 48)
    same = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    assert (preprocess_face(same) == same).all()


def test_every_preset_states_its_budget_in_the_cli_help():
    from typer.testing import CliRunner

    from flows.cli import app

    assert set(PRESET_BUDGETS) == set(PRESETS)
    assert all(m.model in model_names() for p in PRESETS.values() for m in (p.members or (p,)))
    result = CliRunner().invoke(app, ["train", "--help"])
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # rich's box, wrapped lines joined
    assert result.exit_code == 0
    for name, budget in PRESET_BUDGETS.items():
        assert f"{name} ({budget})" in text


def test_cli_help_names_every_built_in_architecture():
    """The CLI names the architectures without importing Keras: its list is the registry's."""
    from typer.testing import CliRunner

    from emotion_core.models import BUILT_IN_MODELS, MODELS
    from flows.cli import app

    model_names()  # imports the built-in architectures
    built_in = {name for name, spec in MODELS.items() if spec.build.__module__.endswith(".architectures")}
    assert set(BUILT_IN_MODELS) == built_in
    for command in (["train", "--help"], ["pipeline", "--help"]):
        result = CliRunner().invoke(app, command)
        text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
        assert result.exit_code == 0
        assert f"Architecture (default: the preset's): {', '.join(BUILT_IN_MODELS)}." in text


def test_model_registry():
    assert {"seed_cnn", "vgg_small", "vgg_lite", "vgg_mid", "vgg_wide"} <= set(model_names())
    seed = build_model("seed_cnn", 48, 7)
    assert seed.count_params() == 4_478_727  # the seed's architecture, layer for layer
    kernels = [layer.kernel_size for layer in seed.layers if layer.__class__.__name__ == "Conv2D"]
    assert kernels == [(3, 3), (5, 5), (3, 3), (3, 3)]
    assert build_model("vgg_small", 48, 7).count_params() < seed.count_params() / 5
    assert build_model("vgg_lite", 48, 7).count_params() < seed.count_params() / 5
    mid, mid320 = build_model("vgg_mid", None, 7), build_model("vgg_mid320", None, 7)
    widths = [[layer.filters for layer in m.layers if layer.__class__.__name__ == "Conv2D"] for m in (mid, mid320)]
    assert widths == [[24, 64, 128, 128, 256, 256], [24, 64, 128, 128, 320, 320]]  # only the last stage wider
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", 48, 7)


def test_residual_network_adds_each_blocks_input_and_takes_any_face_size():
    """``res_mid``: a stride-2 stem, then residual blocks at 10x10 and 5x5 (on 40 px crops) whose
    output is their input plus two convolutions; global pooling, so crops and whole faces alike."""
    import keras

    net = build_model("res_mid", None, 7)
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128, 128, 128, 256, 256, 256]
    assert convs[0].strides == (2, 2) and all(c.strides == (1, 1) for c in convs[1:])
    faces = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    for size in (40, 48):
        probs = np.asarray(net(faces[:, :size, :size], training=False))
        assert probs.shape == (2, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    adds = [layer for layer in net.layers if isinstance(layer, keras.layers.Add)]
    blocks = ((convs[2], convs[4]), (convs[5], convs[7]))  # each block's widening conv and its last conv
    for add, (widen, last) in zip(adds, blocks, strict=True):
        block_input = net.layers[net.layers.index(widen) + 2]
        assert isinstance(block_input, keras.layers.Activation)
        probe = keras.Model(net.input, [block_input.output, add.output])
        x_in, x_out = (np.asarray(t) for t in probe(faces, training=False))
        assert not np.allclose(x_out, x_in, atol=1e-3)
        last.kernel.assign(np.zeros(last.kernel.shape, "float32"))  # the block's branch now adds nothing
        x_in, x_out = (np.asarray(t) for t in probe(faces, training=False))
        assert np.allclose(x_out, x_in, atol=1e-5)  # relu(input + 0): the skip carries the input through


def test_spatial_head_sees_the_centre_window_of_any_face_size():
    """``vgg_mid_fc`` flattens its last map (no global pooling): it takes 40 px crops as they are and
    whole faces by their centre 40 px, so a face's border does not change its output."""
    from emotion_core.models.architectures import SPATIAL_WINDOW

    net = build_model("vgg_mid_fc", None, 7)
    assert any(layer.__class__.__name__ == "Flatten" for layer in net.layers)
    assert not any("GlobalAveragePooling" in layer.__class__.__name__ for layer in net.layers)
    faces = np.random.default_rng(0).uniform(0, 255, (3, 48, 48, 1)).astype("float32")
    lo, hi = (48 - SPATIAL_WINDOW) // 2, (48 + SPATIAL_WINDOW) // 2
    centre = faces[:, lo:hi, lo:hi]
    assert np.allclose(net(faces), net(centre), atol=1e-6)
    other_border = faces.copy()
    other_border[:, :lo] = 0
    other_border[:, :, hi:] = 255
    assert np.allclose(net(other_border), net(faces), atol=1e-6)
    shifted = faces[:, lo - 2 : hi - 2, lo:hi]  # the face two pixels higher: the head knows where things are
    assert not np.allclose(net(shifted), net(centre), atol=1e-3)
    fixed = build_model("vgg_mid_fc", 48, 7)
    fixed.set_weights(net.get_weights())
    assert np.allclose(fixed(faces), net(faces), atol=1e-6)


def stripes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An easy two-class task: horizontal vs vertical stripes with noise and random phase."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    grid = np.arange(48)
    x = np.empty((n, 48, 48), np.uint8)
    for i in range(n):
        wave = 127 + 100 * np.sin(grid / 3.0 + rng.uniform(0, 6.28))
        img = np.tile(wave, (48, 1)) if y[i] else np.tile(wave[:, None], (1, 48))
        x[i] = np.clip(img + rng.normal(0, 20, (48, 48)), 0, 255)
    return x, y


def packed_stripes(n_train=384, n_val=64) -> PackedFaces:
    x, y = stripes(n_train + n_val)
    split = np.array(["train"] * n_train + ["val"] * n_val)
    return PackedFaces(x, y, split, ("horizontal", "vertical"), "stripes")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_training_learns_and_inference_matches_training(tmp_path, label_smoothing):
    """Both losses: plain sparse cross-entropy, and the presets' label-smoothed one (one-hot targets)."""
    packed = packed_stripes()
    config = TrainConfig(epochs=4, batch_size=32, patience=None, label_smoothing=label_smoothing)
    outcome = train(packed, config, tmp_path / "work")
    x_train, y_train = packed.part("train")
    probs = predict_probs(outcome.model, x_train)
    inference_acc = float((probs.argmax(1) == y_train).mean())
    reported = outcome.history["accuracy"][outcome.kept_epoch - 1]
    assert reported > 0.8, outcome.history
    # Guard against a train/inference mismatch (double rescaling, BatchNorm statistics, precision):
    assert inference_acc >= reported - 0.1
    x_val, y_val = packed.part("val")
    targets = np.eye(2, dtype="float32")[y_val] if label_smoothing else y_val
    keras_acc = outcome.model.evaluate(x_val[..., None].astype("float32"), targets, verbose=0, return_dict=True)
    ours = float((predict_probs(outcome.model, x_val).argmax(1) == y_val).mean())
    assert ours == pytest.approx(keras_acc["accuracy"], abs=1e-6)
    assert probs.dtype == np.float32
    again = train(packed, config, tmp_path / "work")  # finished work is not repeated
    assert np.allclose(predict_probs(again.model, x_val), predict_probs(outcome.model, x_val), atol=1e-6)


def test_sgd_with_nesterov_momentum_trains(tmp_path):
    """``optimizer="sgd"``: SGD with Nesterov momentum 0.9 (and weight decay on the kernels) learns."""
    import keras

    from emotion_core.train import _optimizer

    config = TrainConfig(epochs=4, batch_size=32, patience=None, optimizer="sgd", learning_rate=0.03)
    sgd = _optimizer(replace(config, weight_decay=5e-4))
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9 and sgd.weight_decay
    compiled = []

    class SeeOptimizer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            compiled.append((self.model.optimizer, float(self.model.optimizer.learning_rate)))

    outcome = train(packed_stripes(), config, tmp_path / "work", callbacks=[SeeOptimizer()])
    ((used, rate),) = compiled  # the training itself ran with SGD, Nesterov momentum 0.9, at the config's rate
    assert isinstance(used, keras.optimizers.SGD) and used.nesterov and used.momentum == 0.9
    assert rate == pytest.approx(0.03) and not used.weight_decay
    x_val, y_val = packed_stripes().part("val")
    assert float((predict_probs(outcome.model, x_val).argmax(1) == y_val).mean()) > 0.8, outcome.history


def test_mixup_trains_on_blended_targets_weighted_by_their_classes(tmp_path):
    """``mixup``: the network learns from blended faces and targets, each weighted by the blend of
    its two classes' weights (Keras's ``class_weight`` would take the larger share's alone)."""
    import tensorflow as tf

    from emotion_core.train import _weighted_targets

    targets = tf.data.Dataset.from_tensors((tf.zeros((2, 1)), tf.constant([[0.7, 0.3], [0.0, 1.0]])))
    ((_, _, weights),) = list(_weighted_targets(targets, {0: 1.0, 1: 3.0}).as_numpy_iterator())
    assert np.allclose(weights, [0.7 * 1.0 + 0.3 * 3.0, 3.0])

    config = TrainConfig(epochs=4, batch_size=32, patience=None, label_smoothing=0.1, crop=40, mixup=0.2)
    packed = packed_stripes()
    outcome = train(packed, config, tmp_path / "work")
    x_val, y_val = packed.part("val")
    assert float((predict_probs(outcome.model, x_val).argmax(1) == y_val).mean()) > 0.8, outcome.history
    plain = train(packed, replace(config, mixup=0.0), tmp_path / "plain")  # the same training on unblended batches
    assert outcome.history["loss"][-1] > plain.history["loss"][-1] + 0.05  # blended targets cannot be fit as well
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(mixup=-0.1).resolved()
    # mixup came later: trainings keyed without it keep their work folders
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, mixup=0.0).key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, mixup=0.2).key("k")


@pytest.mark.parametrize("model", ["vgg_mid", "vgg_mid_fc"])
def test_crop_trained_bfloat16_model_infers_on_whole_faces_in_float32(tmp_path, model):
    """The presets' recipe trains on 40 px crops in bfloat16; the model it keeps takes whole 48 px
    faces in float32, averages each face with its mirror image, and scores them as training's
    validation (whole faces, bfloat16, no mirror) did. Both heads: global pooling, and the spatial
    head that sees the centre 40 px of a whole face."""
    packed = packed_stripes()
    config = TrainConfig(
        model=model,
        epochs=4,
        batch_size=32,
        patience=None,
        label_smoothing=0.1,
        crop=40,
        precision="mixed_bfloat16",
        flip_average=True,
    )
    outcome = train(packed, config, tmp_path / "work")
    model = outcome.model
    assert model.input_shape == (None, 48, 48, 1)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    x_val, y_val = packed.part("val")
    ours = float((predict_probs(model, x_val).argmax(1) == y_val).mean())
    reported = outcome.history["val_accuracy"][outcome.kept_epoch - 1]
    assert reported > 0.8, outcome.history
    assert ours == pytest.approx(reported, abs=0.05)  # bfloat16 vs float32 rounding, mirror averaging
    probs = predict_probs(model, x_val)
    assert np.allclose(probs, predict_probs(model, x_val[:, :, ::-1]), atol=1e-6)  # mirror-invariant
    import keras

    [net] = [layer for layer in model.layers if isinstance(layer, keras.Model)]  # inside the flip wrapper
    assert np.allclose(probs, predict_probs(net, x_val, flip_average=True), atol=1e-6)
    again = train(packed, config, tmp_path / "work")  # the saved final model loads as it was kept
    assert again.model.input_shape == (None, 48, 48, 1)
    assert np.allclose(predict_probs(again.model, x_val), predict_probs(model, x_val), atol=1e-6)


def test_standardized_faces_are_seen_at_one_brightness_and_contrast(tmp_path):
    """``standardize``: the network divides each face's own contrast out (minus its mean, over its
    standard deviation): a brighter copy of a face gets its probabilities, a flatter one nearly so (down
    to the epsilon's floor), where the plain network's move 10x more; it trains
    in the presets' recipe (crops, bfloat16, fused batch norm) and saves with Keras's own layers."""
    import keras

    packed = packed_stripes()
    config = TrainConfig(
        epochs=4, batch_size=32, patience=None, label_smoothing=0.1, crop=40, precision="mixed_bfloat16",
        flip_average=True, standardize=True,
    )  # fmt: skip
    outcome = train(packed, config, tmp_path / "work")
    x_val, y_val = packed.part("val")
    probs = predict_probs(outcome.model, x_val)
    assert (probs.argmax(1) == y_val).mean() > 0.8, outcome.history
    faces = x_val.astype(np.float32)  # pixels as a camera gives them, unclipped
    brighter, flatter = faces + 40, faces * 0.5 + 64
    np.testing.assert_allclose(predict_probs(outcome.model, brighter), probs, atol=1e-4)
    flatter_change = np.abs(predict_probs(outcome.model, flatter) - probs).max()
    plain = train(packed, replace(config, standardize=False), tmp_path / "plain").model
    plain_probs = predict_probs(plain, faces)
    for other in (brighter, flatter):
        assert np.abs(predict_probs(plain, other) - plain_probs).max() > 10 * max(flatter_change, 1e-3)
    saved = keras.saving.load_model(outcome.work_dir / "final.keras", compile=False, safe_mode=True)
    np.testing.assert_allclose(predict_probs(saved, x_val), probs, atol=1e-6)
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, standardize=False).key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, standardize=True).key("k")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("channels", [24, 32])  # bfloat16: 24 goes through float32, 32 stays bfloat16
def test_fused_batch_norm_trains_as_keras_batch_norm(policy, channels):
    """The training kernel computes what Keras's BatchNormalization computes: outputs, gradients
    of the input, scale and offset, and the moving statistics (the batch's biased variance)."""
    import keras
    import tensorflow as tf

    from emotion_core.models.kernels import FusedBatchNormalization

    shape = (8, 5, 6, channels)
    rng = np.random.default_rng(0)
    weights = [rng.normal(1, 0.2, channels), rng.normal(0, 0.2, channels), rng.normal(0, 1, channels)]
    weights = [w.astype("float32") for w in [*weights, rng.uniform(0.5, 2, channels)]]
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = tf.constant(rng.normal(2, 3, shape).astype("float32"))
        x = tf.cast(x, keras.mixed_precision.global_policy().compute_dtype)
        results = []
        for layer in (keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)):
            layer.build(shape)
            layer.set_weights(weights)
            inference = layer(x, training=False)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
            grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
            assert y.dtype == x.dtype
            results.append([inference, y, *grads, layer.moving_mean, layer.moving_variance])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keras_bn, fused = ([np.asarray(tf.cast(t, tf.float32)) for t in r] for r in results)
    np.testing.assert_array_equal(keras_bn[0], fused[0])  # inference is Keras's own call
    for ours, theirs in zip(fused[1:], keras_bn[1:], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not np.allclose(keras_bn[-1], weights[3])  # the moving variance did move


def test_networks_train_on_fused_kernels_and_are_saved_with_keras_layers(tmp_path):
    import keras

    from emotion_core.models.kernels import FusedBatchNormalization
    from emotion_core.train import training_model

    config = TrainConfig(model="res_mid", epochs=1, batch_size=32, patience=None, crop=40, flip_average=True)
    plain = build_model("res_mid", None, 2)
    fused = training_model(config.resolved(), 2)
    assert [w.shape for w in fused.weights] == [w.shape for w in plain.weights]
    for ours, theirs in zip(fused.layers, plain.layers, strict=True):
        fused_bn = isinstance(theirs, keras.layers.BatchNormalization)
        assert type(ours) is (FusedBatchNormalization if fused_bn else type(theirs))
    outcome = train(packed_stripes(64, 32), config, tmp_path / "work")
    saved = keras.saving.load_model(outcome.work_dir / "final.keras", compile=False, safe_mode=True)
    saved_kinds = {
        type(layer) for layer in saved._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert saved_kinds == {keras.layers.BatchNormalization}
    x_val, _ = packed_stripes(64, 32).part("val")
    np.testing.assert_allclose(predict_probs(saved, x_val), predict_probs(outcome.model, x_val), atol=1e-6)


def test_keep_last_keeps_the_schedules_last_epoch_not_the_best(tmp_path):
    import keras

    from emotion_core.train import training_model

    packed = packed_stripes(128, 32)
    config = TrainConfig(epochs=3, batch_size=32, patience=None, keep="last", precision="float32")
    outcome = train(packed, config, tmp_path / "work")
    assert outcome.kept_epoch == 3
    state = json.loads((tmp_path / "work" / "checkpoint" / "state.json").read_text())
    last = training_model(config.resolved(), 2)
    last.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    last.optimizer.build(last.trainable_variables)
    last.load_weights(tmp_path / "work" / "checkpoint" / state["file"])
    x_val, _ = packed.part("val")
    assert np.allclose(predict_probs(outcome.model, x_val), predict_probs(last, x_val), atol=1e-6)
    assert all(m.keep == "last" for name, p in PRESETS.items() if name != "seed" for m in (p.members or (p,)))


def test_auto_precision_follows_the_cpus_bfloat16_instructions(tmp_path):
    from emotion_core.train import auto_precision

    with_bf16, without = tmp_path / "bf16", tmp_path / "plain"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert auto_precision(with_bf16) == "mixed_bfloat16"
    assert auto_precision(without) == "float32"
    assert auto_precision(tmp_path / "missing") == "float32"
    assert TrainConfig(precision="float32").resolved().precision == "float32"
    assert TrainConfig().resolved().precision == auto_precision()
    from flows.train import training_config

    assert training_config("cpu", None, None, None, None).precision == auto_precision()  # the preset's
    assert training_config("cpu", None, None, None, None, "float32").precision == "float32"  # --precision
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16").resolved()
    with pytest.raises(ValueError, match="crop"):
        TrainConfig(crop=64).resolved()
    with pytest.raises(ValueError, match="multiple of vgg_mid's stride 8"):  # 36 px crops of 48 px faces (run AF)
        TrainConfig(crop=36).resolved()
    assert TrainConfig(crop=32).resolved().crop == 32 and TrainConfig(crop=48).resolved().crop == 48
    with pytest.raises(ValueError, match="keep"):
        TrainConfig(keep="first").resolved()
    with pytest.raises(ValueError, match="erase"):
        TrainConfig(erase=1.5).resolved()
    # random erasing came later: trainings keyed without it keep their work folders
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, erase=0.0).key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, erase=0.5).key("k")
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment=-0.5).resolved()
    # the augmentation strength came later: trainings keyed without it keep their work folders
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, augment=1.0).key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, augment=0.5).key("k")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop").resolved()
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, optimizer="adam").key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, optimizer="sgd").key("k")
    # the seed's network has a fixed input size (Flatten): it trains on whole faces under any preset
    assert PRESETS["cpu"].resolved().crop == 40 and replace(PRESETS["cpu"], model="seed_cnn").resolved().crop is None


def test_learning_rate_and_optimizer_override_the_preset():
    """``--learning-rate`` and ``--optimizer`` of ``emotion train`` and ``emotion pipeline``."""
    from flows.train import training_config

    preset = training_config("cpu", None, None, None, None)
    overridden = training_config("cpu", None, None, None, 0.03, optimizer="sgd")
    assert (overridden.learning_rate, overridden.optimizer) == (0.03, "sgd")
    assert replace(overridden, learning_rate=preset.learning_rate, optimizer=preset.optimizer) == preset
    for rate in (0.0, -1e-3):  # 0 silently meant "the model's default" before
        with pytest.raises(ValueError, match="learning rate must be positive"):
            training_config("cpu", None, None, None, rate)


def test_initial_weights_do_not_depend_on_other_threads_drawing_random_numbers(tmp_path, monkeypatch):
    """Every Keras initializer takes its seed from Python's global ``random`` when it is made; the
    orchestrator's threads use that generator too. A draw between seeding and building the network
    (as a Prefect thread may make under load) must not change the training (the likely cause of a
    killed and resumed pipeline that once trained other weights than its clean run from epoch 1)."""
    import random

    import emotion_core.train as train_module

    packed = packed_stripes(64, 32)
    config = TrainConfig(epochs=1, batch_size=32, patience=None)
    quiet = train(packed, config, tmp_path / "quiet").model.get_weights()
    build = train_module.training_model

    def build_after_another_threads_draw(*args, **kwargs):
        random.random()  # what another thread of the process may do at this instant
        return build(*args, **kwargs)

    monkeypatch.setattr(train_module, "training_model", build_after_another_threads_draw)
    raced = train(packed, config, tmp_path / "raced").model.get_weights()
    for a, b in zip(quiet, raced, strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_training_resumes_from_its_last_epoch(tmp_path):
    import keras

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash after epoch 2")

    packed = packed_stripes(128, 32)
    config = TrainConfig(epochs=4, batch_size=32, patience=None, label_smoothing=0.1, crop=40)  # the presets' recipe
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(packed, config, tmp_path / "work", callbacks=[Crash()])
    outcome = train(packed, config, tmp_path / "work")
    assert outcome.resumed_from_epoch == 2
    assert len(outcome.history["loss"]) == 4  # epochs 1-2 before the crash, 3-4 after it
    assert not list((tmp_path / "work").rglob(".tmp*"))
    checkpoint = json.loads((tmp_path / "work" / "checkpoint" / "state.json").read_text())
    assert checkpoint["epoch"] == 4 and (tmp_path / "work" / "checkpoint" / checkpoint["best_file"]).is_file()
    # Identity with an uninterrupted training, across processes, is asserted by
    # tests/test_faults.py::test_twenty_random_kills_end_with_the_clean_runs_manifest_and_model.


def test_plan_epochs_fits_the_rest_of_the_budget_after_the_first_epoch():
    from emotion_core.budget import FINISH_RESERVE_S, plan_epochs

    assert plan_epochs(100, 28.0, 3000.0) == 100  # a fast machine trains the preset's epochs
    assert plan_epochs(100, 90.0, 3300.0) == 1 + int((3300 - FINISH_RESERVE_S) // 90)  # a slow one fewer
    assert plan_epochs(100, 90.0, 60.0) == 1  # nothing left: the epoch already run
    assert plan_epochs(100, 90.0, -500.0) == 1


def test_epochs_are_costed_at_the_first_epochs_pace_after_its_warm_up():
    from emotion_core.budget import PACED_STEPS, WARM_UP_STEPS, steady_epoch_seconds

    # 360 steps: the first 10 took 8 s (tracing), the next 350 at 0.1 s, then 2 s of validation
    warm, last = (WARM_UP_STEPS, 8.0), (360, 8.0 + 350 * 0.1)
    assert steady_epoch_seconds(45.0, 360, warm, last) == pytest.approx(360 * 0.1 + 2.0)
    assert steady_epoch_seconds(45.0, 360, None, last) == 45.0  # too short an epoch to pace: all of it
    assert steady_epoch_seconds(45.0, 360, warm, (WARM_UP_STEPS + PACED_STEPS - 1, 20.0)) == 45.0
    assert steady_epoch_seconds(45.0, None, warm, last) == 45.0
    assert steady_epoch_seconds(30.0, 360, (10, 0.5), (360, 35.5)) == 30.0  # never more than it took


class TickingClock:
    """A clock that advances ``step`` seconds each time it is read (the planner reads it at each
    epoch's start and end, and after each step of the epoch it plans on)."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_time_budget_trains_the_epochs_that_fit_and_resumes_on_its_plan(tmp_path):
    """On a clock that ticks 10 s a read, the first epoch of ``s`` steps (too few to pace) takes
    10 (s + 1) s and ends 10 (s + 2) s after the start: a budget of that, the reserve and room for
    2.5 more such epochs trains 3 of the 5 asked for. The planned training is, weight for weight,
    the training of ``epochs=3``; a resumed one follows the saved plan even when its own clock
    would plan otherwise."""
    import keras

    from emotion_core.budget import FINISH_RESERVE_S, read_plan

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash after epoch 2")

    packed = packed_stripes(128, 32)
    recipe = TrainConfig(batch_size=32, patience=None, label_smoothing=0.1, crop=40, keep="last")
    steps = len(packed.part("train")[1]) // 32  # full batches only (dataset.epoch_order)
    epoch_s = 10.0 * (steps + 1)
    budget_s = 10.0 * (steps + 2) + FINISH_RESERVE_S + 2.5 * epoch_s
    budgeted = replace(recipe, epochs=5, budget_minutes=budget_s / 60)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(packed, budgeted, tmp_path / "budget", callbacks=[Crash()], started_at=0.0, clock=TickingClock(10.0))
    plan = read_plan(tmp_path / "budget")
    assert plan["epochs"] == 3 and plan["cap"] == 5
    assert plan["first_epoch_seconds"] == plan["epoch_seconds"] == epoch_s
    slow = TickingClock(1000.0)  # would plan 1 epoch
    outcome = train(packed, budgeted, tmp_path / "budget", started_at=0.0, clock=slow)
    assert outcome.resumed_from_epoch == 2 and len(outcome.history["loss"]) == 3 and outcome.plan == plan
    outright = train(packed, replace(recipe, epochs=3), tmp_path / "outright")
    assert outright.plan is None and len(outright.history["loss"]) == 3
    assert outcome.history["loss"] == outright.history["loss"]
    x_val = packed.part("val")[0]
    assert np.array_equal(predict_probs(outcome.model, x_val), predict_probs(outright.model, x_val))
    again = train(packed, budgeted, tmp_path / "budget", started_at=0.0, clock=slow)  # finished: reused
    assert again.plan == plan and len(again.history["loss"]) == 3
    roomy = train(packed, replace(budgeted, epochs=2), tmp_path / "roomy", started_at=0.0, clock=TickingClock(10.0))
    assert roomy.plan["epochs"] == 2 and len(roomy.history["loss"]) == 2  # never more than asked for


def test_presets_budgets_and_how_overrides_change_them():
    from flows.train import training_config

    assert PRESETS["cpu"].budget_minutes == 60 and PRESETS["cpu-long"].budget_minutes == 240
    assert training_config("cpu", None, None, None, None).budget_minutes == 60
    assert training_config("cpu", None, 30, None, None).budget_minutes is None  # --epochs alone: exactly those
    assert training_config("cpu", None, 30, None, None, budget_minutes=45).budget_minutes == 45
    assert training_config("cpu", None, None, None, None, budget_minutes=0).budget_minutes is None
    assert training_config("smoke", None, None, None, None).budget_minutes is None
    with pytest.raises(ValueError, match="time budget"):
        training_config("cpu", None, None, None, None, budget_minutes=-5)
    # trainings keyed before budgets existed keep their work folders
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, budget_minutes=None).key("k")
    assert TrainConfig(epochs=3).key("k") != TrainConfig(epochs=3, budget_minutes=60).key("k")


def test_training_is_repeatable_in_one_process_after_other_training(tmp_path):
    """Same data and config give the same weights even when the process trained another model in
    between (the Prefect flow retries in-process); across processes: tests/test_faults.py."""
    packed = packed_stripes(192, 32)
    config = TrainConfig(epochs=2, batch_size=32, patience=10)
    first = train(packed, config, tmp_path / "first")
    train(packed, TrainConfig(model="vgg_small", epochs=1, batch_size=16, seed=7), tmp_path / "other")
    second = train(packed, config, tmp_path / "second")
    x_val = packed.part("val")[0]
    assert second.history["loss"] == first.history["loss"]
    assert np.array_equal(predict_probs(second.model, x_val), predict_probs(first.model, x_val))


def test_untrainable_data_is_refused():
    x, y = stripes(10)
    with pytest.raises(EmptyTrainingData, match="no usable training rows"):
        check_trainable(PackedFaces(x, y, np.array(["val"] * 10), ("a", "b"), "k"))
    with pytest.raises(EmptyTrainingData, match="two classes"):
        check_trainable(PackedFaces(x, np.zeros(10, np.int32), np.array(["train"] * 10), ("a", "b"), "k"))


def test_pack_faces_is_cached_by_manifest_content(tmp_path):
    import cv2

    rows = []
    for i in range(6):
        (tmp_path / "faces" / "a").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "faces" / "a" / f"{i}.png"), np.full((60, 50), i * 40, np.uint8))
        rows.append(
            {
                "id": str(i),
                "source_path": f"a/{i}.jpg",
                "label": "x" if i % 2 else "y",
                "face_path": f"a/{i}.png",
                "status": "ok",
                "split": "train" if i < 4 else "test",
            }
        )
    df = from_records(rows)
    first = pack_faces(df, ("x", "y"), tmp_path)
    assert first.x.shape == (6, 48, 48) and first.counts() == {"train": 4, "val": 0, "test": 2}
    (tmp_path / "faces" / "a" / "0.png").unlink()  # the cache no longer needs the crops
    second = pack_faces(df, ("x", "y"), tmp_path)
    assert second.key == first.key and (second.x == first.x).all()
    df.loc[1, "split"] = "val"
    with pytest.raises(ImageError, match="file not found"):
        pack_faces(df, ("x", "y"), tmp_path)  # changed manifest: rebuilt, and the missing crop shows


def test_default_tracking_uri_ignores_stores_configured_earlier(tmp_path):
    import modelstore

    modelstore.configure(f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")  # exports MLFLOW_TRACKING_URI
    uri = modelstore.default_tracking_uri(tmp_path / "data")
    assert uri == f"sqlite:///{(tmp_path / 'data').resolve() / 'mlflow' / 'mlflow.db'}"


def test_architecture_fingerprint_follows_the_builders_code_only(tmp_path, monkeypatch):
    """Editing or adding another model in the same module leaves a model's print (and so its
    training key) alone; editing the model or a helper it calls changes it."""
    import importlib
    import sys

    from emotion_core.models import MODELS, architecture_fingerprint

    def module_with(helper_body: str, other_body: str) -> dict[str, str]:
        (tmp_path / "fp_models.py").write_text(
            "from emotion_core.models import register\n\n"
            f"def _helper(n):\n    return {helper_body}\n\n"
            "@register('fp_one')\ndef fp_one(size, n):\n    return _helper(n)\n\n"
            f"@register('fp_two')\ndef fp_two(size, n):\n    return {other_body}\n"
        )
        sys.modules.pop("fp_models", None)
        importlib.invalidate_caches()
        importlib.import_module("fp_models")
        return {name: architecture_fingerprint(name) for name in ("fp_one", "fp_two")}

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("emotion_core.models.MODELS", dict(MODELS))
    first = module_with("n + 1", "n * 2")
    other_edited = module_with("n + 1", "n * 3")
    helper_edited = module_with("n + 2", "n * 3")
    sys.modules.pop("fp_models", None)
    assert first["fp_one"] != first["fp_two"]
    assert other_edited["fp_one"] == first["fp_one"] and other_edited["fp_two"] != first["fp_two"]
    assert helper_edited["fp_one"] != first["fp_one"]


def test_an_ensemble_preset_resolves_its_members_and_is_keyed_by_them():
    from emotion_core.train import describe_members, ensemble, members_in_budget

    long = PRESETS["cpu-long"].resolved()
    assert long.model == "vgg_wide+res_mid" and long.budget_minutes == 240
    assert [m.model for m in long.members] == ["vgg_wide", "res_mid"]
    assert all(m.learning_rate and m.precision in ("float32", "mixed_bfloat16") for m in long.members)
    assert describe_members(long) == "vgg_wide (300 epochs), res_mid (300 epochs)"
    assert [m.budget_minutes for m in members_in_budget(long)] == [120, 120]
    assert [m.budget_minutes for m in members_in_budget(replace(long, budget_minutes=None))] == [None, None]
    # cpu-pair: cpu-long's two networks in the cpu preset's recipe, each within half of its hour
    halves = [replace(PRESETS["cpu"], model=m, budget_minutes=30) for m in ("vgg_wide", "res_mid")]
    assert members_in_budget(PRESETS["cpu-pair"]) == halves and PRESETS["cpu-pair"].budget_minutes == 60
    one, two = replace(PRESETS["smoke"], model="vgg_lite"), replace(PRESETS["smoke"], model="vgg_small")
    pair = ensemble(one, two)
    assert pair.key("k") == ensemble(one, two).key("k") != ensemble(one, replace(two, seed=7)).key("k")
    assert pair.key("k") != pair.key("other data") and pair.key("k") not in (one.key("k"), two.key("k"))
    # single networks keyed before ensembles existed keep their work folders
    assert TrainConfig(epochs=3).key("k") == TrainConfig(epochs=3, members=()).key("k")
    with pytest.raises(ValueError, match="at least two members"):
        ensemble(one).resolved()
    with pytest.raises(ValueError, match="cannot be an ensemble"):
        ensemble(one, pair).resolved()
    with pytest.raises(ValueError, match="one size"):
        ensemble(one, replace(two, input_size=64)).resolved()
    with pytest.raises(ValueError, match="each member as its own training"):
        faces = PackedFaces(
            np.zeros((4, 48, 48), np.uint8), np.array([0, 1, 0, 1]), np.array(["train"] * 4), ("a", "b"), "k"
        )
        train(faces, pair, "unused")


def test_overrides_of_an_ensemble_preset_apply_to_each_member_and_a_model_trains_alone():
    from flows.train import training_config

    long = training_config("cpu-long", None, 50, None, 2e-3, precision="float32", budget_minutes=90)
    assert long.budget_minutes == 90 and [m.epochs for m in long.members] == [50, 50]
    assert {m.learning_rate for m in long.members} == {2e-3} and {m.precision for m in long.members} == {"float32"}
    assert training_config("cpu-long", None, 50, None, None).budget_minutes is None  # --epochs alone, as for one
    alone = training_config("cpu-long", "vgg_mid", None, None, None)
    assert not alone.members and alone.model == "vgg_mid" and alone.budget_minutes == 240 and alone.epochs == 300
    assert alone.flip_average and alone.crop == 40 and alone.keep == "last"  # the members' recipe
    with pytest.raises(ValueError, match="at least 1"):
        training_config("cpu-long", None, 0, None, None)


def test_an_average_of_networks_is_one_model_that_saves_and_loads_safely(tmp_path):
    import keras

    from emotion_core.models import average_of, with_flip_average
    from emotion_core.train import inference_model

    nets = [with_flip_average(build_model("vgg_lite", 48, 7)) for _ in range(2)]  # one architecture twice
    ensemble = average_of(nets)
    faces = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 1)).astype("float32")
    expected = (np.asarray(nets[0](faces)) + np.asarray(nets[1](faces))) / 2
    assert not np.allclose(nets[0](faces), nets[1](faces))  # different weights: the mean is not either
    assert np.allclose(ensemble(faces), expected, atol=1e-6)
    ensemble.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False, safe_mode=True)
    assert np.allclose(loaded(faces), expected, atol=1e-6)
    with pytest.raises(ValueError, match="share input and classes"):
        average_of([nets[0], build_model("vgg_lite", 48, 5)])
    untrained = inference_model(PRESETS["cpu-long"].resolved(), 7)  # what bench.realtime_latency times
    assert untrained.output_shape == (None, 7) and len(untrained.layers) == 4  # face, two members, average
