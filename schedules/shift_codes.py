"""The packed power-of-two weight format of shift linears (numpy; shared by passes and kernels).

A weight matrix ``W`` of shape (K, N) (in features, out features) is stored as

- ``exponents`` int32[N]: a per-output-channel scale ``2^e_n``, the nearest power of two to
  the channel's largest magnitude, clamped to fp32's normal range [-126, 127];
- ``codes``: one ``bits``-bit code per weight, 1 sign bit above a ``bits - 1``-bit level field.
  Level 0 is a zero weight; level ``l >= 1`` is ``2^(l - top)`` with ``top = 2^(bits-1) - 1``,
  so 5-bit codes span ``2^[-14, 0]`` (DeepShift's range) and 4-bit codes ``2^[-6, 0]``:

      w[k, n] = (-1)^sign * 2^(e_n + level - top)     (level >= 1), else 0

- ``packed`` uint32[ceil(K / per_word), N]: ``per_word = 32 // bits`` codes of consecutive k
  in one word (code ``j`` at bit ``bits * j``), words laid out with n fastest so that the
  kernels' lanes or threads over n read consecutive words. Codes past K are zero weights.

Rounding is to the nearest representable value in the linear domain (a magnitude between two
levels goes to the closer one; below half the smallest level, to zero). A weight that is
already a signed power of two inside its channel's range encodes exactly: ``decode(encode(W))
== W`` bit for bit, the lossless case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_BITS = (4, 5)
_MIN_EXPONENT, _MAX_EXPONENT = -126, 127


def top_level(bits: int) -> int:
    """The level whose weight is the channel scale itself (``2^0``)."""
    return (1 << (bits - 1)) - 1


def codes_per_word(bits: int) -> int:
    return 32 // bits


@dataclass(frozen=True)
class ShiftWeights:
    """One linear layer's weights in the packed shift format."""

    bits: int
    in_features: int
    packed: np.ndarray  # uint32 [ceil(K / per_word), N]
    exponents: np.ndarray  # int32 [N]

    @property
    def out_features(self) -> int:
        return int(self.exponents.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.exponents.nbytes)

    def codes(self) -> np.ndarray:
        """Unpacked codes, uint32 [K, N]."""
        per_word = codes_per_word(self.bits)
        shifts = (self.bits * np.arange(per_word, dtype=np.uint32))[None, :, None]
        unpacked = (self.packed[:, None, :] >> shifts) & np.uint32((1 << self.bits) - 1)
        return unpacked.reshape(-1, self.out_features)[: self.in_features]

    def decode(self) -> np.ndarray:
        """The float32 weights the codes stand for, (K, N); exact powers of two."""
        codes = self.codes().astype(np.int64)
        level = codes & top_level(self.bits)
        negative = (codes >> (self.bits - 1)) & 1
        exponent = self.exponents[None, :].astype(np.int64) + level - top_level(self.bits)
        magnitude = np.where(level > 0, np.ldexp(1.0, exponent), 0.0)
        return np.where(negative == 1, -magnitude, magnitude).astype(np.float32)


@dataclass(frozen=True)
class WeightError:
    """How far the encoded weights are from the original ones."""

    exact: bool
    sqnr_db: float  # inf when exact (or the layer is all zeros)
    max_abs_error: float


def _nearest_exponent(magnitude: np.ndarray) -> np.ndarray:
    """Exponent of the power of two nearest to each positive magnitude (linear distance)."""
    mantissa, exponent = np.frexp(magnitude)  # magnitude = mantissa * 2^exponent, mantissa in [0.5, 1)
    # Between 2^(x-1) and 2^x the midpoint is 0.75 * 2^x.
    return np.where(mantissa >= 0.75, exponent, exponent - 1).astype(np.int64)


def encode(weight: np.ndarray, bits: int = 5) -> ShiftWeights:
    """Round a float weight (K, N) to the shift format; raises ValueError on NaN or Inf."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"shift codes are 4 or 5 bits, not {bits}")
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2:
        raise ValueError(f"a linear weight is 2-D (in, out), got shape {weight.shape}")
    if not np.isfinite(weight).all():
        bad = np.argwhere(~np.isfinite(weight))[0]
        raise ValueError(f"weight holds NaN or Inf (first at [{bad[0]}, {bad[1]}])")
    in_features, out_features = weight.shape
    top = top_level(bits)
    magnitude = np.abs(weight.astype(np.float64))
    channel_max = magnitude.max(axis=0, initial=0.0)
    exponents = np.zeros(out_features, dtype=np.int64)
    nonzero_channels = channel_max > 0
    exponents[nonzero_channels] = _nearest_exponent(channel_max[nonzero_channels])
    exponents = np.clip(exponents, _MIN_EXPONENT, _MAX_EXPONENT)

    with np.errstate(divide="ignore"):
        nearest = _nearest_exponent(np.where(magnitude > 0, magnitude, 1.0))
    level = np.clip(nearest - exponents[None, :] + top, 1, top)
    smallest = np.ldexp(1.0, exponents[None, :] + level - top)
    # Clipped up to the smallest level: keep it only if closer than zero.
    level = np.where((magnitude > 0) & (magnitude >= smallest / 2), level, 0)
    codes = (level | ((weight < 0).astype(np.int64) << (bits - 1))).astype(np.uint32)
    codes = np.where(level > 0, codes, 0).astype(np.uint32)

    per_word = codes_per_word(bits)
    words = -(-in_features // per_word)
    padded = np.zeros((words * per_word, out_features), dtype=np.uint32)
    padded[:in_features] = codes
    shifts = (bits * np.arange(per_word, dtype=np.uint32))[None, :, None]
    packed = np.bitwise_or.reduce(padded.reshape(words, per_word, out_features) << shifts, axis=1)
    return ShiftWeights(bits, in_features, packed.astype(np.uint32), exponents.astype(np.int32))


def weight_error(weight: np.ndarray, encoded: ShiftWeights) -> WeightError:
    """SQNR (dB) and max absolute error of ``encoded`` against the float ``weight``."""
    weight = np.asarray(weight, dtype=np.float64)
    error = weight - encoded.decode().astype(np.float64)
    noise = float(np.square(error).sum())
    if noise == 0.0:
        return WeightError(True, float("inf"), 0.0)
    signal = float(np.square(weight).sum())
    return WeightError(False, 10.0 * np.log10(signal / noise), float(np.abs(error).max()))


def reference_matmul(x: np.ndarray, encoded: ShiftWeights, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ W (+ bias)`` with the encoded weights, accumulated in float32 in k order.

    Every product is exact (a power-of-two weight), so with this accumulation order the result
    is bit-identical to a kernel that adds the shifted activations in k order.
    """
    x = np.asarray(x, dtype=np.float32)
    weight = encoded.decode()
    acc = np.zeros(x.shape[:-1] + (weight.shape[1],), dtype=np.float32)
    for k in range(weight.shape[0]):
        acc += x[..., k : k + 1] * weight[k]
    if bias is not None:
        acc += np.asarray(bias, dtype=np.float32)
    return acc
