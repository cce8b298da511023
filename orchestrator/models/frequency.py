"""The frequency-domain second stream a model may take (`frequency_stream`): the image's 2-D
Fourier magnitude through a small CNN, fused with the backbone's pooled features by
`classifier.build_model`."""
from __future__ import annotations

import keras
from keras import layers

FREQUENCY_CLIP = 3.0  # standardised log-magnitudes beyond +-3 sigma are clipped


@keras.saving.register_keras_serializable(package="medsweep")
class FrequencyMagnitude(layers.Layer):
    """The image's 2-D Fourier magnitude as a one-channel image: grey levels -> |FFT2|, log1p,
    centred (low frequencies in the middle), standardised per image and clipped to +-3, so its
    scale does not depend on brightness or size. The magnitude ignores where an object sits,
    and holds periodic texture and overall scale that a spatial CNN sees only locally.
    Always float32: an FFT in float16 overflows."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        ops = keras.ops
        x = ops.cast(inputs, "float32")
        grey = ops.mean(x, axis=-1)  # (N, H, W)
        real, imag = ops.fft2((grey, ops.zeros_like(grey)))
        magnitude = ops.log1p(ops.sqrt(real * real + imag * imag))
        height, width = ops.shape(grey)[1], ops.shape(grey)[2]
        magnitude = ops.roll(magnitude, shift=(height // 2, width // 2), axis=(1, 2))
        mean = ops.mean(magnitude, axis=(1, 2), keepdims=True)
        std = ops.std(magnitude, axis=(1, 2), keepdims=True)
        z = (magnitude - mean) / (std + 1e-6)
        return ops.expand_dims(ops.clip(z, -FREQUENCY_CLIP, FREQUENCY_CLIP), -1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def frequency_features(pixels, units: int = 64):
    """FFT magnitude -> a small CNN (BatchNorm, Dropout 0.2) -> `units` features; it always
    trains, like the head, whatever the unfreezing phase."""
    x = FrequencyMagnitude(name="frequency_magnitude")(pixels)
    for i, filters in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                          name=f"frequency_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"frequency_bn{i}")(x)
        x = layers.ReLU(name=f"frequency_relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="frequency_pool")(x)
    x = layers.Dense(units, activation="relu", name="frequency_dense")(x)
    return layers.Dropout(0.2, name="frequency_dropout")(x)
