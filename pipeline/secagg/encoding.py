"""Fixed-point encoding of contributions into the secure-sum ring Z_(2^32) or Z_(2^64).

Secure aggregation adds masks modulo 2^bits, so what a site contributes must be an
element of that ring. Real values are clipped to ``[-clip, clip]``, scaled by
``2^scale_bits`` and rounded to an integer; negative integers are stored in two's
complement (``-1`` is ``2^bits - 1``). The coordinator decodes the *sum* by reading it
back as a signed integer ("centring": elements at or above ``2^(bits-1)`` are negative)
and dividing by ``2^scale_bits``.

That only gives the true sum if the sum of ``n`` sites never leaves the signed half of
the ring, which :func:`check_bit_budget` enforces before anything is encoded:
``n * ceil(clip * 2^scale_bits) <= 2^(bits-1) - 1``.

Rings:

* ``Ring.R32`` (uint32) for model updates and other approximate values: half the mask
  bandwidth of R64.
* ``Ring.R64`` (uint64) where the sum must be exact, e.g. GWAS sufficient statistics and
  counts. Integer arrays with ``scale_bits=0`` pass exactly (no float round trip);
  :func:`decode_integers` returns the exact signed sum as int64.

The ring is a property of the job's :class:`Layout` (every field of one secure-sum
vector shares it), not a global setting.

uint64 on the JAX side: JAX only has 64-bit integers when ``jax_enable_x64`` is set,
a global switch library code must not flip. Device kernels therefore represent an R64
element as two uint32 words ``(lo, hi)`` with explicit carries (:func:`pairs_add`,
:func:`pairs_neg`, :func:`pairs_sum`); the layout of those words is exactly the
little-endian memory layout of a numpy uint64 array, so :func:`to_pairs` and
:func:`from_pairs` are free views on the host.

Rounding is ``"nearest"`` (deterministic, ties to even, error at most half a unit of
``2^-scale_bits``) or ``"stochastic"`` (unbiased: rounds up with probability equal to the
fractional part). Stochastic rounding needs an explicit ``jax.random`` key; that noise
only has to be unbiased, not secret, so a non-cryptographic generator is right there.
Masks never come from ``jax.random`` (see :mod:`pipeline.secagg.masks`).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.errors import ConfigurationError, InputError

Rounding = Literal["nearest", "stochastic"]


class Ring(enum.Enum):
    """The ring Z_(2^bits) a secure sum is computed in."""

    R32 = 32
    R64 = 64

    @property
    def modulus_bits(self) -> int:
        """Number of bits of the ring's modulus (32 or 64)."""
        return int(self.value)

    @property
    def dtype(self) -> np.dtype:
        """The numpy unsigned dtype whose wrap-around is this ring's arithmetic."""
        return np.dtype(np.uint32) if self is Ring.R32 else np.dtype(np.uint64)

    @property
    def signed_dtype(self) -> np.dtype:
        """The signed dtype that reads a ring element in two's complement."""
        return np.dtype(np.int32) if self is Ring.R32 else np.dtype(np.int64)

    @property
    def words(self) -> int:
        """Number of 32-bit words per element (1 or 2): masks are drawn as uint32 words."""
        return self.modulus_bits // 32

    @property
    def max_signed(self) -> int:
        """Largest absolute value a centred sum may reach: ``2^(bits-1) - 1``."""
        return (1 << (self.modulus_bits - 1)) - 1

    @classmethod
    def from_dtype(cls, dtype: Any) -> Ring:
        """The ring whose element dtype is ``dtype`` (uint32 or uint64).

        Raises:
            ConfigurationError: for any other dtype.
        """
        dtype = np.dtype(dtype)
        if dtype == np.uint32:
            return cls.R32
        if dtype == np.uint64:
            return cls.R64
        raise ConfigurationError(
            f"secure-sum vectors must be uint32 (Ring.R32) or uint64 (Ring.R64), got {dtype}; "
            "encode the values with pipeline.secagg.encoding.encode first"
        )


@dataclass(frozen=True)
class FixedPoint:
    """How one array of values becomes ring elements.

    ``value -> round(clip(value, -clip, clip) * 2**scale_bits) mod 2**bits``.
    Integer contributions (counts) use ``scale_bits=0`` and ``clip = the largest count a
    site may contribute``; they pass exactly.

    Attributes:
        ring: the ring of the secure sum.
        scale_bits: fractional bits kept; the resolution is ``2^-scale_bits``.
        clip: largest absolute value one site may contribute; larger values are clipped.
    """

    ring: Ring
    scale_bits: int
    clip: float

    def __post_init__(self) -> None:
        if not isinstance(self.ring, Ring):
            raise ConfigurationError(f"FixedPoint.ring must be a Ring (R32 or R64), got {self.ring!r}")
        if isinstance(self.scale_bits, bool) or not isinstance(self.scale_bits, (int, np.integer)):
            raise ConfigurationError(f"FixedPoint.scale_bits must be an int, got {self.scale_bits!r}")
        if not 0 <= self.scale_bits < self.ring.modulus_bits - 1:
            raise ConfigurationError(
                f"FixedPoint.scale_bits={self.scale_bits} is outside [0, {self.ring.modulus_bits - 2}] "
                f"for {self.ring.name}; lower scale_bits"
            )
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(f"FixedPoint.clip must be a finite positive number, got {self.clip!r}")
        if self.max_encoded > self.ring.max_signed:
            raise ConfigurationError(
                f"clip={self.clip} at scale_bits={self.scale_bits} needs "
                f"{self.max_encoded.bit_length() + 1} signed bits, more than {self.ring.name} has; "
                "lower clip or scale_bits, or use Ring.R64"
            )

    @property
    def max_encoded(self) -> int:
        """Largest absolute encoded value of one site: ``ceil(clip * 2^scale_bits)``.

        Computed exactly (``Fraction``), so the budget boundary does not depend on float
        rounding; the ceiling also covers stochastic rounding, which may round up.
        """
        return math.ceil(Fraction(self.clip) * (1 << self.scale_bits))

    def max_sites(self) -> int:
        """Largest number of sites whose sum cannot wrap around the ring."""
        return self.ring.max_signed // self.max_encoded


def check_bit_budget(encoding: FixedPoint, num_sites: int) -> None:
    """Refuse an encoding under which the sum of ``num_sites`` contributions could wrap.

    A wrapped sum decodes to a wrong value without any sign of error, so the check
    runs before any site encodes anything. The condition is
    ``num_sites * ceil(clip * 2^scale_bits) <= 2^(bits-1) - 1``.

    Raises:
        ConfigurationError: naming the parameter to change and the value that would fit.
    """
    if isinstance(num_sites, bool) or not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ConfigurationError(f"num_sites must be a positive int, got {num_sites!r}")
    limit = encoding.ring.max_signed
    need = int(num_sites) * encoding.max_encoded
    if need <= limit:
        return
    # Suggest the smallest change of each parameter that fits.
    per_site = limit // int(num_sites)
    clip = Fraction(encoding.clip)
    fitting_scale_bits = [s for s in range(encoding.scale_bits) if math.ceil(clip * (1 << s)) <= per_site]
    scale_hint = (
        f"lower scale_bits to {fitting_scale_bits[-1]}" if fitting_scale_bits else "no scale_bits fits with this clip"
    )
    clip_hint = f"lower clip to at most {per_site / (1 << encoding.scale_bits):.6g}"
    ring_hint = "use Ring.R64" if encoding.ring is Ring.R32 else "no larger ring exists"
    raise ConfigurationError(
        f"bit budget exceeded: {num_sites} sites x clip {encoding.clip} x 2^{encoding.scale_bits} "
        f"= {need} does not fit in the signed half of {encoding.ring.name} (max {limit}); "
        f"{scale_hint}, or {clip_hint}, or {ring_hint}, or aggregate at most {encoding.max_sites()} sites"
    )


def encode(
    values: Any,
    encoding: FixedPoint,
    *,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
) -> np.ndarray:
    """Encode values as ring elements (same shape, dtype ``encoding.ring.dtype``).

    Integer arrays are shifted, not rounded, so counts pass exactly. Float values are
    clipped to ``[-clip, clip]`` (so ``+-inf`` become ``+-clip``), then rounded.

    Args:
        values: array-like of real or integer values.
        encoding: clip, scale and ring.
        rounding: ``"nearest"`` (deterministic) or ``"stochastic"`` (unbiased).
        key: ``jax.random`` key, required for stochastic rounding of float values.

    Raises:
        InputError: if values contain NaN.
        ConfigurationError: for an unknown rounding or a missing key.
    """
    array = np.asarray(values)
    if rounding not in ("nearest", "stochastic"):
        raise ConfigurationError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    ring_dtype = encoding.ring.dtype
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return _encode_integers(array, encoding)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"cannot encode values of dtype {array.dtype}; expected integers or floats")
    scaled = np.clip(array.astype(np.float64), -encoding.clip, encoding.clip) * float(1 << encoding.scale_bits)
    if np.isnan(scaled).any():
        index = tuple(int(i) for i in np.argwhere(np.isnan(scaled))[0])
        raise InputError(f"value at index {index} is NaN; a contribution must be a number (impute or drop it first)")
    if rounding == "nearest":
        rounded = np.rint(scaled)
    else:
        if key is None:
            raise ConfigurationError(
                "stochastic rounding needs key=jax.random.key(...) (the rounding noise is drawn from it); "
                "pass a fresh key per round, or use rounding='nearest'"
            )
        uniform = _uniform01(key, scaled.shape)
        rounded = np.floor(scaled + uniform)
    # |rounded| <= max_encoded < 2^63, so the int64 cast is exact; astype to the unsigned
    # ring dtype then wraps modulo 2^bits, which is two's complement.
    return rounded.astype(np.int64).astype(ring_dtype)


def _encode_integers(array: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """Exact path for counts: clip to the integer part of ``clip``, shift by ``scale_bits``."""
    bound = math.floor(encoding.clip)
    if array.dtype == np.uint64:
        array = np.minimum(array, np.uint64(bound)).astype(np.int64)
    clipped = np.clip(array.astype(np.int64), -bound, bound)
    return (clipped << encoding.scale_bits).astype(encoding.ring.dtype)


def _uniform01(key: jax.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) float64 with 32 random bits each, from a ``jax.random`` key.

    Drawn as uint32 bits and scaled on the host, so the resolution (2^-32) does not
    depend on whether JAX runs with 64-bit floats.
    """
    bits = np.asarray(jax.random.bits(key, shape, dtype=jnp.uint32))
    return bits.astype(np.float64) * (1.0 / 4294967296.0)


def to_signed(total: np.ndarray) -> np.ndarray:
    """Read ring elements as two's-complement signed integers (int32 or int64), exactly."""
    total = np.asarray(total)
    ring = Ring.from_dtype(total.dtype)
    return total.view(ring.signed_dtype)


def decode(total: np.ndarray, encoding: FixedPoint, num_sites: int) -> np.ndarray:
    """Decode the ring sum of ``num_sites`` contributions back to float64.

    The sum is centred (two's complement) then divided by ``2^scale_bits``. The bit
    budget is checked again: decoding a sum the budget does not cover would silently
    return garbage. For R64 sums beyond 2^53 use :func:`decode_integers` (float64 has
    53 bits of mantissa).

    Raises:
        ConfigurationError: if the dtype is not the encoding's ring, or the budget fails.
    """
    total = np.asarray(total)
    _check_ring_dtype(total, encoding.ring)
    check_bit_budget(encoding, num_sites)
    return to_signed(total).astype(np.float64) / float(1 << encoding.scale_bits)


def decode_integers(total: np.ndarray, encoding: FixedPoint, num_sites: int) -> np.ndarray:
    """Exact signed sum as int64, for integer contributions (requires ``scale_bits == 0``).

    Raises:
        ConfigurationError: if ``scale_bits`` is not 0, the dtype is wrong, or the budget fails.
    """
    if encoding.scale_bits != 0:
        raise ConfigurationError(
            f"decode_integers needs scale_bits=0 (integer contributions), got {encoding.scale_bits}; use decode"
        )
    total = np.asarray(total)
    _check_ring_dtype(total, encoding.ring)
    check_bit_budget(encoding, num_sites)
    return to_signed(total).astype(np.int64)


def _check_ring_dtype(total: np.ndarray, ring: Ring) -> None:
    if total.dtype != ring.dtype:
        raise ConfigurationError(f"sum has dtype {total.dtype}, but the encoding's ring {ring.name} needs {ring.dtype}")


# --- uint64 ring elements on the JAX side, as (lo, hi) uint32 pairs -------------------


def to_pairs(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split uint64 elements into (lo, hi) uint32 arrays (host side; a strided view)."""
    words = np.ascontiguousarray(vector, dtype=np.uint64).view("<u4").reshape(*np.shape(vector), 2)
    return words[..., 0], words[..., 1]


def from_pairs(lo: Any, hi: Any) -> np.ndarray:
    """Join (lo, hi) uint32 arrays into uint64 elements (host side)."""
    lo = np.asarray(lo, dtype=np.uint32)
    hi = np.asarray(hi, dtype=np.uint32)
    words = np.stack([lo, hi], axis=-1).astype("<u4")
    return words.view("<u8")[..., 0].astype(np.uint64, copy=False)


def pairs_add(a_lo: jax.Array, a_hi: jax.Array, b_lo: jax.Array, b_hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a + b) mod 2^64 on (lo, hi) uint32 pairs: the carry is ``lo < a_lo`` after wrapping."""
    lo = a_lo + b_lo
    carry = (lo < a_lo).astype(jnp.uint32)
    return lo, a_hi + b_hi + carry


def pairs_neg(lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(-x) mod 2^64 on (lo, hi) uint32 pairs: ``~x + 1``, the +1 carries into hi when lo is 0."""
    carry = (lo == 0).astype(jnp.uint32)
    return jnp.uint32(0) - lo, ~hi + carry


def pairs_sum(lo: jax.Array, hi: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Sum mod 2^64 along ``axis`` of (lo, hi) uint32 pairs, as one variadic XLA reduction."""

    def add(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return pairs_add(a[0], a[1], b[0], b[1])

    zero = jnp.uint32(0)
    total_lo, total_hi = jax.lax.reduce((lo, hi), (zero, zero), add, (axis,))
    return total_lo, total_hi


# --- layouts: the named fields of one secure-sum vector --------------------------------


@dataclass(frozen=True)
class Field:
    """One named array of a contribution, with its shape and encoding."""

    name: str
    shape: tuple[int, ...]
    encoding: FixedPoint

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a Field needs a non-empty name")
        shape = tuple(int(s) for s in self.shape)
        if any(s < 0 for s in shape):
            raise ConfigurationError(f"field {self.name!r}: shape {self.shape} has a negative dimension")
        object.__setattr__(self, "shape", shape)

    @property
    def size(self) -> int:
        """Number of ring elements the field occupies."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Layout:
    """The fixed, named layout of a contribution: fields concatenated into one ring vector.

    All fields share one ring, because a secure sum masks the whole vector in one ring.
    """

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        if not fields:
            raise ConfigurationError("a Layout needs at least one Field")
        names = [f.name for f in fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigurationError(f"Layout field names must be unique; repeated: {duplicates}")
        rings = {f.encoding.ring for f in fields}
        if len(rings) > 1:
            detail = ", ".join(f"{f.name}: {f.encoding.ring.name}" for f in fields)
            raise ConfigurationError(
                f"all fields of a Layout must share one ring ({detail}); pick one ring for the job"
            )
        object.__setattr__(self, "fields", fields)

    @property
    def ring(self) -> Ring:
        """The ring of the whole vector."""
        return self.fields[0].encoding.ring

    @property
    def size(self) -> int:
        """Length of the encoded vector."""
        return sum(f.size for f in self.fields)

    def check_bit_budget(self, num_sites: int) -> None:
        """Check every field's budget for ``num_sites`` (see :func:`check_bit_budget`)."""
        for f in self.fields:
            try:
                check_bit_budget(f.encoding, num_sites)
            except ConfigurationError as error:
                raise ConfigurationError(f"field {f.name!r}: {error}") from None

    def encode(
        self,
        values: Mapping[str, Any],
        *,
        rounding: Rounding = "nearest",
        key: jax.Array | None = None,
    ) -> np.ndarray:
        """Encode a dict of named arrays into one 1-D ring vector, fields in layout order.

        With stochastic rounding each field gets its own key (``jax.random.fold_in(key, i)``).

        Raises:
            InputError: for a missing or unexpected field, or a wrong shape.
        """
        expected = [f.name for f in self.fields]
        missing = [n for n in expected if n not in values]
        extra = sorted(set(values) - set(expected))
        if missing or extra:
            raise InputError(f"contribution fields do not match the layout: missing {missing}, unexpected {extra}")
        out = np.empty(self.size, dtype=self.ring.dtype)
        offset = 0
        for index, f in enumerate(self.fields):
            array = np.asarray(values[f.name])
            if array.shape != f.shape:
                raise InputError(f"field {f.name!r} has shape {array.shape}, the layout expects {f.shape}")
            field_key = None if key is None else jax.random.fold_in(key, index)
            out[offset : offset + f.size] = encode(array, f.encoding, rounding=rounding, key=field_key).reshape(-1)
            offset += f.size
        return out

    def decode(self, total: np.ndarray, num_sites: int) -> dict[str, np.ndarray]:
        """Split a summed ring vector back into named float64 arrays."""
        total = np.asarray(total)
        if total.shape != (self.size,):
            raise InputError(f"sum has shape {total.shape}, the layout expects ({self.size},)")
        out: dict[str, np.ndarray] = {}
        offset = 0
        for f in self.fields:
            out[f.name] = decode(total[offset : offset + f.size], f.encoding, num_sites).reshape(f.shape)
            offset += f.size
        return out
