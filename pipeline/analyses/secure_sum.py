"""``secure_sum``: every site contributes one vector; the result is their sum.

The smallest analysis: one round, no statistics. It checks a federation end to end
(certificates, transport, masking, dropout recovery) against a sum anyone can compute.
The spec names the vector::

    analysis: secure_sum
    vector:
      source: test        # a deterministic vector derived from the site's name
      length: 16
      dtype: int          # int (exact, Z_2^64 with scale_bits=0) or float
    # or
    vector:
      source: file
      path: contribution.npy   # relative to the site's dataset folder, inside it

The result is a table with one column ``sum`` and the number of sites included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.analyses.protocol import Analysis, Contribution, Result, RoundLayout, SiteContext, StepResult
from pipeline.dataset import Dataset
from pipeline.encoding import DEFAULT_FLOAT_CLIP, DEFAULT_FLOAT_SCALE_BITS, Integer, Real, plan_layout
from pipeline.errors import ConfigurationError, InputError

__all__ = ["SECURE_SUM", "SecureSum", "SecureSumState", "VectorSpec", "deterministic_vector", "INTEGER_CLIP"]

INTEGER_CLIP = float(2**40)
"""Largest absolute integer one site may contribute (exact in Z_2^64 for up to 2^22 sites)."""

_MAX_LENGTH = 1 << 27


def deterministic_vector(site: str, length: int, dtype: str) -> np.ndarray:
    """The deterministic test vector of ``site``: integers in [-1000, 1000) or floats in [-1, 1).

    Derived from SHA-256 of the site name, so a test can compute the expected sum.
    """
    seed = int.from_bytes(hashlib.sha256(b"genofed-test-vector:" + site.encode()).digest()[:8], "little")
    generator = np.random.default_rng(seed)
    if dtype == "int":
        return generator.integers(-1000, 1000, size=length, dtype=np.int64)
    return generator.uniform(-1.0, 1.0, size=length)


@dataclass(frozen=True)
class VectorSpec:
    """Which vector each site contributes: ``source`` test or file, its length and dtype."""

    source: str
    length: int
    dtype: str
    path: str | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> VectorSpec:
        """Checks the spec's ``vector`` mapping.

        Raises:
            ConfigurationError: naming the key and what was expected.
        """
        vector = spec.get("vector")
        if not isinstance(vector, Mapping):
            raise ConfigurationError("secure_sum: the spec needs a 'vector' mapping with 'source' (test or file)")
        source = vector.get("source")
        dtype = vector.get("dtype", "int")
        if dtype not in ("int", "float"):
            raise ConfigurationError(f"secure_sum: vector.dtype must be 'int' or 'float', got {dtype!r}")
        length = vector.get("length")
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= _MAX_LENGTH:
            raise ConfigurationError(f"secure_sum: vector.length must be an integer in [1, {_MAX_LENGTH}], got {length!r}")
        if source == "test":
            return cls("test", length, dtype)
        if source == "file":
            path = vector.get("path")
            if not isinstance(path, str) or not path or Path(path).is_absolute() or ".." in Path(path).parts:
                raise ConfigurationError(
                    f"secure_sum: vector.path must be a relative path inside the site's dataset folder, got {path!r}"
                )
            return cls("file", length, dtype, path)
        raise ConfigurationError(f"secure_sum: vector.source must be 'test' or 'file', got {source!r}")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "length": self.length, "dtype": self.dtype,
                **({"path": self.path} if self.path is not None else {})}


@dataclass(frozen=True)
class SecureSumState:
    """The job's public state: the vector spec and the number of invited sites."""

    vector: VectorSpec
    num_participants: int

    def to_json(self) -> dict[str, Any]:
        return {"vector": self.vector.to_json(), "num_participants": self.num_participants}


class SecureSum(Analysis[SecureSumState]):
    """Sum of one vector per site, in one secure-sum round."""

    name = "secure_sum"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> SecureSumState:
        """Validates the vector spec; the state is the spec itself."""
        return SecureSumState(VectorSpec.parse(spec), len(participants))

    def state_from_json(self, data: Mapping[str, Any]) -> SecureSumState:
        return SecureSumState(VectorSpec(**data["vector"]), int(data["num_participants"]))

    def layout(self, state: SecureSumState, round_index: int) -> RoundLayout:
        """One field ``vector`` of the spec's length: exact integers, or reals with 32 fractional bits."""
        shape = (state.vector.length,)
        if state.vector.dtype == "int":
            return plan_layout([Integer("vector", shape, INTEGER_CLIP)], state.num_participants)
        bits = DEFAULT_FLOAT_SCALE_BITS
        return plan_layout([Real("vector", shape, DEFAULT_FLOAT_CLIP, min_scale_bits=bits, max_scale_bits=bits)],
                           state.num_participants)

    def contributions(self, state: SecureSumState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """None: the vector is no statistic of the site's samples.

        A ``test`` vector is derived from the site's name alone; a ``file`` vector is
        whatever the site's operator put in its dataset folder for this purpose, which
        the analysis cannot relate to any sample (the operator who writes it decides
        what it may reveal). Either way no sample enters the release, so the ledger has
        nothing to check or record.
        """
        return ()

    def site_step(self, state: SecureSumState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's vector: its test vector, or the ``.npy`` file in its dataset folder."""
        vector = state.vector
        if vector.source == "test":
            values = deterministic_vector(site.name, vector.length, vector.dtype)
        else:
            assert vector.path is not None
            path = Path(dataset.path) / vector.path
            try:
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise InputError(f"{path}: cannot read the contribution vector ({error}); expected a .npy array") from None
            if values.shape != (vector.length,):
                raise InputError(f"{path}: vector of shape {values.shape}, the job expects ({vector.length},)")
            if vector.dtype == "int" and not np.issubdtype(values.dtype, np.integer):
                raise InputError(f"{path}: the job sums integers, the file holds {values.dtype}")
            if vector.dtype == "float":
                values = values.astype(np.float64)
        return {"vector": values}

    def coordinator_step(
        self, state: SecureSumState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[SecureSumState]:
        """The sum is the result."""
        values = np.asarray(total["vector"])
        table = pa.table({"sum": pa.array(values)})
        summary = {"analysis": self.name, "length": int(values.size), "num_sites": int(num_sites), "dtype": state.vector.dtype}
        return state, True, Result(summary=summary, tables={"sum": table})


SECURE_SUM = SecureSum()
