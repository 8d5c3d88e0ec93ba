"""Faster training kernels for the built-in networks: the same layers, weights and maths, computed by
other TensorFlow ops while a network trains.

Keras 3 computes a BatchNormalization training step as about ten element-wise ops in float32 (moments,
normalisation, their gradients, casts). TensorFlow's fused batch-norm op does the same in one op each
way (oneDNN on CPUs, in bfloat16 where the channel count suits its kernels): measured on 2 cores of an
Intel Xeon with AMX-BF16, a training step (batch 64, 40 px crops, bfloat16) took 56 ms instead of 80
for ``vgg_mid``, 54 instead of 101 for ``vgg_wide``, 62 instead of 95 for ``res_mid``; on an AMD EPYC
with AVX512-BF16 (no AMX), where the convolutions take most of a step, 1.38x, 1.28x and 1.02x (README,
"Training and MLflow"). Networks are built and saved with Keras's own layers; :func:`with_training_kernels` gives
the copy that trains, with the same weights.
"""

from __future__ import annotations

import keras

from . import clone_replacing

#: oneDNN's bfloat16 batch norm is fast for multiples of 16 channels; at 24 (vgg_mid's first layer) it
#: measured ~8x slower than the float32 one, which those layers use instead.
_FUSED_BFLOAT16_CHANNELS = 16


@keras.saving.register_keras_serializable(package="emotion_core")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization whose training-mode call on NHWC feature maps is TensorFlow's
    ``FusedBatchNormV3`` (forward and gradient each one op). Same weights, the batch's biased
    variance for normalising and for the moving statistics, Keras's momentum update. Inference,
    other ranks and axes, masks and renorm are Keras's own call."""

    def call(self, inputs, training=None, mask=None):
        import tensorflow as tf

        nhwc = len(inputs.shape) == 4 and self.axis in (3, -1)  # Keras keeps the axis an int
        if not (training and self.trainable and nhwc) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        native = inputs.dtype == tf.float32 or channels % _FUSED_BFLOAT16_CHANNELS == 0
        x = inputs if native else tf.cast(inputs, tf.float32)
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=scale,
            offset=offset,
            mean=tf.zeros([channels], tf.float32),
            variance=tf.ones([channels], tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # the op returns the unbiased one
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def with_training_kernels(net: keras.Model) -> keras.Model:
    """A copy of the functional network ``net`` with the same layer names, configuration and
    weights whose BatchNormalization layers train with :class:`FusedBatchNormalization`."""

    def fused(layer):
        if type(layer) is keras.layers.BatchNormalization:
            return FusedBatchNormalization.from_config(layer.get_config())
        return None

    return clone_replacing(net, fused)
