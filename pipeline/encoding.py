"""The contract between analyses and the runtime: rings, fixed point, fields and layouts.

An analysis *declares* what a site contributes in a round: named arrays with their
shapes and bounds (:func:`count_field`, :func:`integer_field`, :func:`real_field`,
assembled by :func:`plan_layout`). Only the runtime turns a :class:`Layout` into one
ring vector (:meth:`Layout.encode`) and a summed ring vector back into named arrays
(:meth:`Layout.decode`, the one exact decode). Both sides import this module; it knows
nothing of masks, keys or genetics.

Secure aggregation adds masks modulo 2^bits, so what a site contributes must be an
element of that ring. Real values are clipped to ``[-clip, clip]``, scaled by
``2^scale_bits`` and rounded to an integer; negative integers are stored in two's
complement (``-1`` is ``2^bits - 1``). The coordinator decodes the *sum* by reading it
back as a signed integer ("centring": elements at or above ``2^(bits-1)`` are negative)
and dividing by ``2^scale_bits``.

That only gives the true sum if the sum of ``n`` sites never leaves the signed half of
the ring, which :func:`check_bit_budget` enforces before anything is encoded:
``n * ceil(clip * 2^scale_bits) <= 2^(bits-1) - 1``. Each field also declares the
bounds of one site's values, so a decoded sum outside ``n`` times those bounds cannot
come from honest sites and is refused (:class:`~pipeline.errors.ProtocolError`), not
published.

Rings:

* ``Ring.R32`` (uint32) for model updates and other approximate values: half the mask
  bandwidth of R64.
* ``Ring.R64`` (uint64) where the sum must be exact, e.g. GWAS sufficient statistics and
  counts. Integer fields (``scale_bits=0``) pass exactly, with no float round trip:
  :meth:`Layout.decode` returns them as int64.

The ring is a property of a :class:`Layout` (every field of one secure-sum vector
shares it), not a global setting. On accelerators the secure-aggregation kernels hold
an R64 element as two uint32 words (:mod:`pipeline.secagg.pairs`).

Rounding is ``"nearest"`` (deterministic, ties to even, error at most half a unit of
``2^-scale_bits``) or ``"stochastic"`` (unbiased: rounds up with probability equal to the
fractional part). Stochastic rounding needs an explicit ``numpy.random.Generator``; that
noise only has to be unbiased, not secret, so a non-cryptographic generator is right
there. Masks never come from it (see :mod:`pipeline.secagg.masks`). The module imports
no JAX: both the analyses and the protocol's message types read it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from pipeline import large_arrays
from pipeline.errors import ConfigurationError, InputError, ProtocolError

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
            "encode the values with pipeline.encoding.encode first"
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
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Encode values as ring elements (same shape, dtype ``encoding.ring.dtype``).

    Integer arrays are shifted, not rounded, so counts pass exactly. Float values are
    clipped to ``[-clip, clip]`` (so ``+-inf`` become ``+-clip``), then rounded.

    Args:
        values: array-like of real or integer values.
        encoding: clip, scale and ring.
        rounding: ``"nearest"`` (deterministic) or ``"stochastic"`` (unbiased).
        rng: the generator of the rounding noise, required for stochastic rounding.

    Raises:
        InputError: if values contain NaN.
        ConfigurationError: for an unknown rounding or a missing generator.
    """
    array = np.asarray(values)
    if rounding not in ("nearest", "stochastic"):
        raise ConfigurationError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    ring_dtype = encoding.ring.dtype
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return _encode_integers(array, encoding)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"cannot encode values of dtype {array.dtype}; expected integers or floats")
    if rounding == "nearest":
        return _encode_nearest(array, encoding)
    if rng is None:
        raise ConfigurationError(
            "stochastic rounding needs rng=numpy.random.default_rng(...) (the rounding noise is drawn from it); "
            "pass a fresh generator per round, or use rounding='nearest'"
        )
    scaled = np.clip(array.astype(np.float64), -encoding.clip, encoding.clip) * float(1 << encoding.scale_bits)
    _refuse_nan(array, bool(np.isnan(scaled).any()))
    rounded = np.floor(scaled + rng.random(scaled.shape))
    # |rounded| <= max_encoded < 2^63, so the int64 cast is exact; astype to the unsigned
    # ring dtype then wraps modulo 2^bits, which is two's complement.
    return rounded.astype(np.int64).astype(ring_dtype)


# Elements per step of the nearest-rounding encoder: its scratch stays in the L2 cache.
_ENCODE_CHUNK = 1 << 16


def _encode_nearest(array: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """Clip, scale and round chunk by chunk through a small scratch, straight into the result.

    The result is the only full-length array made: fresh memory costs more than the
    arithmetic (page faults), and a cached chunk makes every pass cheap. Float32 input
    is computed in float32 when its clip is a float32: clipping and scaling by a power
    of two are then exact, so the integers are those of the float64 computation.
    """
    single = array.dtype == np.float32 and float(np.float32(encoding.clip)) == encoding.clip
    work_dtype = np.dtype(np.float32 if single else np.float64)
    scale = float(1 << encoding.scale_bits)
    flat = array.reshape(-1)
    out = large_arrays.empty(flat.size, encoding.ring.signed_dtype)
    scratch = np.empty(min(flat.size, _ENCODE_CHUNK), dtype=work_dtype)
    for start in range(0, flat.size, _ENCODE_CHUNK):
        stop = min(start + _ENCODE_CHUNK, flat.size)
        chunk, work = flat[start:stop], scratch[: stop - start]
        highest = np.maximum.reduce(chunk)  # NaN when the chunk holds one
        _refuse_nan(array, bool(np.isnan(highest)))
        if highest > encoding.clip or np.minimum.reduce(chunk) < -encoding.clip:
            np.minimum(chunk, encoding.clip, out=work, dtype=work_dtype)
            np.maximum(work, -encoding.clip, out=work)
            np.multiply(work, scale, out=work)
        else:  # nothing to clip: two reductions cost less than two clipping passes
            np.multiply(chunk, scale, out=work, dtype=work_dtype)
        np.rint(work, out=work)
        # |work| <= max_encoded < 2^(bits-1): exact in the signed ring dtype, whose view is two's complement.
        out[start:stop] = work
    return out.view(encoding.ring.dtype).reshape(array.shape)


def _refuse_nan(array: np.ndarray, found: bool) -> None:
    """Raise, naming the first NaN's index, when ``found``."""
    if found:
        index = tuple(int(i) for i in np.argwhere(np.isnan(array))[0])
        raise InputError(f"value at index {index} is NaN; a contribution must be a number (impute or drop it first)")


def _encode_integers(array: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """Exact path for counts: clip to the integer part of ``clip``, shift by ``scale_bits``."""
    bound = math.floor(encoding.clip)
    if array.dtype == np.uint64:
        array = np.minimum(array, np.uint64(bound)).astype(np.int64)
    clipped = np.clip(array.astype(np.int64), -bound, bound)
    return (clipped << encoding.scale_bits).astype(encoding.ring.dtype)


def to_signed(total: np.ndarray) -> np.ndarray:
    """Read ring elements as two's-complement signed integers (int32 or int64), exactly."""
    total = np.asarray(total)
    ring = Ring.from_dtype(total.dtype)
    return total.view(ring.signed_dtype)


def decode(total: np.ndarray, encoding: FixedPoint, num_sites: int) -> np.ndarray:
    """Decode the ring sum of ``num_sites`` contributions, exactly.

    The sum is centred (two's complement); an integer encoding (``scale_bits == 0``)
    gives the exact signed sum as int64 (R64 sums beyond 2^53 stay exact: no float
    round trip), any other is divided by ``2^scale_bits`` into float64. The bit budget is
    checked again: decoding a sum the budget does not cover would silently return garbage.

    Raises:
        ConfigurationError: if the dtype is not the encoding's ring, or the budget fails.
    """
    total = np.asarray(total)
    _check_ring_dtype(total, encoding.ring)
    check_bit_budget(encoding, num_sites)
    signed = to_signed(total)  # a view of ``total``: the integer result must be a copy
    return signed.astype(np.int64) if encoding.scale_bits == 0 else _from_centred(signed, encoding)


def _from_centred(centred: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """Signed ring sums as values: exact int64 for an integer encoding, else float64 divided by the scale.

    The float case is one pass: the cast happens inside the multiplication, and
    multiplying by ``2^-scale_bits`` is exact, like the division it stands for.
    """
    if encoding.scale_bits == 0:
        return centred.astype(np.int64, copy=False)
    return np.multiply(centred, 1.0 / float(1 << encoding.scale_bits), dtype=np.float64)


def _check_ring_dtype(total: np.ndarray, ring: Ring) -> None:
    if total.dtype != ring.dtype:
        raise ConfigurationError(f"sum has dtype {total.dtype}, but the encoding's ring {ring.name} needs {ring.dtype}")


# --- layouts: the named fields of one secure-sum vector --------------------------------


@dataclass(frozen=True)
class Field:
    """One named array of a contribution: its shape, its encoding and one site's bounds.

    Attributes:
        name: the array's name in the contribution.
        shape: its shape.
        encoding: how its values become ring elements; ``encoding.clip`` bounds the
            absolute value one site may contribute.
        nonnegative: one site's values are never below 0 (counts); a negative decoded
            sum is then impossible and refused.
    """

    name: str
    shape: tuple[int, ...]
    encoding: FixedPoint
    nonnegative: bool = False

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

    @property
    def is_integer(self) -> bool:
        """Whether the field carries exact integers (``scale_bits == 0``), decoded as int64."""
        return self.encoding.scale_bits == 0

    def encoded_bounds(self, num_sites: int) -> tuple[int, int]:
        """The least and greatest centred sum ``num_sites`` honest contributions can give."""
        high = int(num_sites) * self.encoding.max_encoded
        return (0 if self.nonnegative else -high), high


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

    def field(self, name: str) -> Field:
        """The field called ``name``.

        Raises:
            ConfigurationError: no such field.
        """
        for f in self.fields:
            if f.name == name:
                return f
        raise ConfigurationError(f"the layout has no field {name!r}; its fields are {[f.name for f in self.fields]}")

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
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Encode a dict of named arrays into one 1-D ring vector, fields in layout order.

        With stochastic rounding the fields draw their noise from ``rng`` one after another.

        Raises:
            InputError: for a missing or unexpected field, or a wrong shape.
        """
        expected = [f.name for f in self.fields]
        missing = [n for n in expected if n not in values]
        extra = sorted(set(values) - set(expected))
        if missing or extra:
            raise InputError(f"contribution fields do not match the layout: missing {missing}, unexpected {extra}")
        out = large_arrays.empty(self.size, self.ring.dtype)
        offset = 0
        for f in self.fields:
            array = np.asarray(values[f.name])
            if array.shape != f.shape:
                raise InputError(f"field {f.name!r} has shape {array.shape}, the layout expects {f.shape}")
            out[offset : offset + f.size] = encode(array, f.encoding, rounding=rounding, rng=rng).reshape(-1)
            offset += f.size
        return out

    def decode(self, total: np.ndarray, num_sites: int) -> dict[str, np.ndarray]:
        """Split the ring sum of ``num_sites`` contributions into named arrays, exactly.

        Integer fields come back as exact int64 (no float round trip, so R64 counts
        beyond 2^53 stay exact); the others as float64. Every centred sum is checked
        against the fields' declared bounds times ``num_sites``.

        Raises:
            InputError: the vector's shape or ring is not the layout's.
            ProtocolError: a sum no ``num_sites`` honest contributions can give (a site
                sent values outside the declared bounds); it names the field and index.
        """
        total = np.asarray(total)
        if total.shape != (self.size,):
            raise InputError(f"sum has shape {total.shape}, the layout expects ({self.size},)")
        _check_ring_dtype(total, self.ring)
        self.check_bit_budget(num_sites)
        signed = to_signed(total).astype(np.int64)
        out: dict[str, np.ndarray] = {}
        offset = 0
        for f in self.fields:
            centred = signed[offset : offset + f.size]
            low, high = f.encoded_bounds(num_sites)
            outside = (centred < low) | (centred > high)
            if outside.any():
                index = int(np.flatnonzero(outside)[0])
                raise ProtocolError(
                    f"field {f.name!r} index {index}: the sum of {num_sites} contributions lies outside the bounds "
                    f"every site declared ([{low}, {high}] in ring units); a site sent values beyond them, "
                    "so the round is refused"
                )
            out[f.name] = _from_centred(centred, f.encoding).reshape(f.shape)
            offset += f.size
        return out


# --- declaring a layout ---------------------------------------------------------------

MAX_SCALE_BITS = 62
"""Most fractional bits a real field may keep (R64 leaves one sign bit and one of headroom)."""


def fit_scale_bits(clip: float, num_sites: int, *, ring: Ring = Ring.R64, max_bits: int = MAX_SCALE_BITS) -> int:
    """Most fractional bits (at most ``max_bits``) at which ``num_sites`` values up to ``clip`` cannot wrap.

    Returns -1 when not even integers fit. The ``+ 1`` of ``clip + 1`` leaves room for
    rounding up (``ceil``), so the result always passes :func:`check_bit_budget`.
    """
    room = ring.max_signed / (int(num_sites) * (float(clip) + 1.0))
    if room < 1:
        return -1
    return min(int(max_bits), int(math.floor(math.log2(room))))


@dataclass(frozen=True)
class Count:
    """A declared field of exact non-negative integers up to ``maximum`` per site (counts)."""

    name: str
    shape: tuple[int, ...]
    maximum: float


@dataclass(frozen=True)
class Integer:
    """A declared field of exact integers in ``[-bound, bound]`` per site."""

    name: str
    shape: tuple[int, ...]
    bound: float


@dataclass(frozen=True)
class Real:
    """A declared field of real values in ``[-bound, bound]`` per site, in fixed point.

    Attributes:
        min_scale_bits: fewest fractional bits the analysis accepts (its precision).
        max_scale_bits: most fractional bits worth keeping.
    """

    name: str
    shape: tuple[int, ...]
    bound: float
    min_scale_bits: int = 0
    max_scale_bits: int = MAX_SCALE_BITS


Declaration = Count | Integer | Real
"""What an analysis says of one field: its kind, shape and one site's bound."""


def _field_in(declaration: Declaration, ring: Ring, num_sites: int) -> Field | None:
    """The field for ``declaration`` in ``ring``, or ``None`` when it does not fit there."""
    if isinstance(declaration, Real):
        bits = fit_scale_bits(declaration.bound, num_sites, ring=ring, max_bits=declaration.max_scale_bits)
        if bits < max(0, declaration.min_scale_bits):
            return None
        return Field(declaration.name, declaration.shape, FixedPoint(ring, bits, float(declaration.bound)))
    limit = float(math.ceil(declaration.maximum if isinstance(declaration, Count) else declaration.bound))
    if int(num_sites) * int(limit) > ring.max_signed:
        return None
    return Field(declaration.name, declaration.shape, FixedPoint(ring, 0, max(limit, 1.0)),
                 nonnegative=isinstance(declaration, Count))


def plan_layout(declarations: Sequence[Declaration], num_sites: int, *, rings: Sequence[Ring] = (Ring.R64,),
                hint: str = "") -> Layout:
    """The layout of ``declarations`` in the first of ``rings`` where every field fits.

    Integer fields fit when ``num_sites`` maxima fit the ring's signed half; real fields
    when at least their ``min_scale_bits`` remain, and then take every bit up to
    ``max_scale_bits``.

    Args:
        declarations: the fields, in vector order.
        num_sites: the largest number of sites the sum may include.
        rings: rings to try, cheapest first (``(Ring.R32, Ring.R64)`` or R64 only).
        hint: what the analysis' user can change, appended to the error.

    Raises:
        ConfigurationError: no ring fits every field; names the first one that does not.
    """
    if isinstance(num_sites, bool) or not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ConfigurationError(f"num_sites must be a positive int, got {num_sites!r}")
    failing = ""
    for ring in rings:
        fields = [_field_in(d, ring, int(num_sites)) for d in declarations]
        if all(f is not None for f in fields):
            return Layout(tuple(f for f in fields if f is not None))
        first = next(d for d, f in zip(declarations, fields) if f is None)
        failing = f"field {first.name!r} (bound {_bound(first):.6g} per site"
        failing += f", at least {first.min_scale_bits} fractional bits)" if isinstance(first, Real) else ")"
    widest = rings[-1].name if rings else "no ring"
    raise ConfigurationError(
        f"the contributions of {num_sites} sites do not fit a {widest} secure sum: {failing} does not fit"
        + (f"; {hint}" if hint else "")
    )


def _bound(declaration: Declaration) -> float:
    return float(declaration.maximum if isinstance(declaration, Count) else declaration.bound)


DEFAULT_FLOAT_CLIP = float(2**20)
DEFAULT_FLOAT_SCALE_BITS = 32


def default_float_encoding(num_sites: int) -> FixedPoint:
    """R64, 32 fractional bits, values clipped to +-2^20: exact to 2^-33 per value, up to 2047 sites."""
    encoding = FixedPoint(Ring.R64, scale_bits=DEFAULT_FLOAT_SCALE_BITS, clip=DEFAULT_FLOAT_CLIP)
    check_bit_budget(encoding, num_sites)
    return encoding


def default_integer_encoding(num_sites: int) -> FixedPoint:
    """R64 with ``scale_bits=0`` and the largest power-of-two clip the sum of ``num_sites`` allows."""
    return FixedPoint(Ring.R64, scale_bits=0, clip=float(2 ** (62 - max(0, num_sites - 1).bit_length())))
