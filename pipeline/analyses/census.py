"""``census``: federated variant QC from genotype counts summed over the sites.

Two rounds:

0. **Variant keys** (a :class:`~pipeline.analyses.KeyUnion`, the one step that is not a
   sum): each site whose policy says ``share_variant_keys`` sends the IDs
   (``chrom:pos:ref:alt``) of its variants whose local minor allele count is at least
   the site's ``min_allele_count``, never a count; the coordinator forms the sorted
   union. This reveals which variants a site holds above that count. A site whose
   policy forbids it sends nothing in this step and still contributes counts in step 1.
1. **Counts** (a secure sum): per union variant, each site's hom-ref, het, hom-alt and
   missing counts (:func:`pipeline.stats.counts.count_variants`), zeros for variants
   it does not have, plus its sample count. The coordinator learns only the sums: the
   global counts, N (so "not typed" = N - the four counts), allele frequency, call
   rate, the Hardy-Weinberg exact p-value (:func:`pipeline.stats.hwe.hwe_exact_p`) and
   a pass/fail filter that every site applies identically.

Counts are encoded exactly (``scale_bits=0``) in Z_2^32 when
``num_sites * max_samples_per_site`` fits its signed half, else in Z_2^64. Variants
whose global minor allele count is below the job's ``min_allele_count`` are not
publishable: their counts and metrics are left out (null) of the result table.

Spec::

    analysis: census
    min_allele_count: 5        # publish threshold; each site refuses one below its own
    min_call_rate: 0.95        # thresholds of the filter (plink2 --geno / --hwe / --maf)
    hwe_p: 1.0e-6
    maf: 0.0
    max_samples_per_site: 10000000
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.analyses import KeyUnion, Result, RoundLayout, SiteContext
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError, InputError, PolicyRefusal
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring
from pipeline.stats.counts import count_variants
from pipeline.stats.hwe import hwe_exact_p

__all__ = ["CENSUS", "Census", "COUNT_FIELDS", "census_table", "minor_allele_count", "site_variant_counts"]

COUNT_FIELDS = ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")
KEYS_ROUND = 0
COUNTS_ROUND = 1
_MEMO_DATASETS = 4
"""Datasets whose per-variant counts a process keeps between the two rounds."""
_READ_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))
"""Chunks a site reads and counts at once: up to 4, half the cores (one on a 2-core machine,
where three site processes sharing the cores ran ~15% slower with two threads each)."""
_memo: OrderedDict[tuple[Any, ...], tuple[pa.Array, np.ndarray]] = OrderedDict()
_memo_lock = threading.Lock()
_DEFAULTS = {"min_allele_count": 5, "min_call_rate": 0.95, "hwe_p": 1e-6, "maf": 0.0, "max_samples_per_site": 10_000_000}


def minor_allele_count(n_hom_ref: np.ndarray, n_het: np.ndarray, n_hom_alt: np.ndarray) -> np.ndarray:
    """min(AC, AN - AC) among called samples: the count disclosure thresholds apply to."""
    allele_count = np.asarray(n_het, np.int64) + 2 * np.asarray(n_hom_alt, np.int64)
    allele_number = 2 * (np.asarray(n_hom_ref, np.int64) + np.asarray(n_het, np.int64) + np.asarray(n_hom_alt, np.int64))
    return np.minimum(allele_count, allele_number - allele_count)


def _number(spec: Mapping[str, Any], name: str, low: float, high: float, *, integer: bool = False) -> Any:
    value = spec.get(name, _DEFAULTS[name])
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"census: {name} must be {kind} in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def census_table(
    variant_id: np.ndarray, counts: Mapping[str, np.ndarray], num_samples: int, parameters: Mapping[str, Any]
) -> pa.Table:
    """The census_variants table from global counts (see ``schemas/census_variants.json``).

    Args:
        variant_id: (variants,) the union's keys.
        counts: the four global count arrays (int64).
        num_samples: N, all samples of the sites included in the sum.
        parameters: the job's thresholds (min_allele_count, min_call_rate, hwe_p, maf).
    """
    hom_ref, het, hom_alt, missing = (np.asarray(counts[name], np.int64) for name in COUNT_FIELDS)
    called = hom_ref + het + hom_alt
    not_typed = num_samples - called - missing
    allele_count = het + 2 * hom_alt
    allele_number = 2 * called
    with np.errstate(invalid="ignore", divide="ignore"):
        call_rate = called / num_samples if num_samples > 0 else np.zeros(called.shape)
        frequency = np.where(allele_number > 0, allele_count / np.maximum(allele_number, 1), np.nan)
    hwe_p = hwe_exact_p(hom_ref, het, hom_alt)
    minor_count = np.minimum(allele_count, allele_number - allele_count)
    publishable = minor_count >= int(parameters["min_allele_count"])
    minor_frequency = np.minimum(frequency, 1.0 - frequency)
    with np.errstate(invalid="ignore"):
        failures = {
            "min_allele_count": ~publishable,
            "call_rate": call_rate < parameters["min_call_rate"],
            "hwe": hwe_p < parameters["hwe_p"],
            "maf": (np.isnan(minor_frequency) | (minor_frequency < parameters["maf"])) if parameters["maf"] > 0 else np.zeros(called.shape, bool),
        }
    reasons = np.full(called.shape, "", dtype=object)
    for reason, mask in failures.items():
        reasons[mask] = np.where(reasons[mask] == "", reason, reasons[mask] + ";" + reason)
    passing = reasons == ""
    reasons[passing] = "PASS"
    hidden = ~publishable

    def ints(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.int64(), mask=hidden)

    def floats(values: np.ndarray) -> pa.Array:
        return pa.array(values, pa.float64(), mask=hidden | np.isnan(values))

    table = pa.table(
        {
            "variant_id": pa.array(variant_id, pa.string()),
            "n_hom_ref": ints(hom_ref),
            "n_het": ints(het),
            "n_hom_alt": ints(hom_alt),
            "n_missing": ints(missing),
            "n_not_typed": ints(not_typed),
            "call_rate": floats(np.asarray(call_rate, np.float64)),
            "allele_count": ints(allele_count),
            "allele_number": ints(allele_number),
            "alt_allele_frequency": floats(frequency),
            "hwe_p_value": floats(hwe_p),
            "publishable": pa.array(publishable, pa.bool_()),
            "pass_qc": pa.array(passing, pa.bool_()),
            "filter": pa.array(reasons.astype(str), pa.string()),
        }
    )
    return schemas.conform(table, "census_variants", source="census result")


def _fingerprint(dataset: Dataset) -> tuple[Any, ...]:
    """What identifies a dataset's content on disk: its path and every file's inode, size and mtime."""
    files = [dataset.path / "dataset.json"]
    for chunk in dataset.chunk_names:
        files += [dataset.path / "genotypes" / f"{chunk}.parquet", dataset.path / "variants" / f"{chunk}.parquet"]
    stats = [os.stat(path) for path in files]
    return (str(dataset.path.resolve()), *((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats))


def site_variant_counts(dataset: Dataset) -> tuple[pa.Array, np.ndarray]:
    """A dataset's variant IDs (genome order) and their hom-ref, het, hom-alt, missing counts.

    Both census rounds need them; reading the genotypes is most of a site step's time,
    so a process keeps them for the last few datasets it counted, keyed by the files'
    identity (a dataset rewritten in between is read again).

    Returns:
        (string array of IDs, int64 (4, variants) counts in :data:`COUNT_FIELDS` order).
    """
    key = _fingerprint(dataset)
    with _memo_lock:
        if key in _memo:
            _memo.move_to_end(key)
            return _memo[key]

    def count_chunk(chunk: str) -> tuple[pa.Array, np.ndarray]:
        block = dataset.read_block(chunk)
        return block.variants.column("variant_id").combine_chunks(), np.stack(count_variants(block.call_dosage))

    # Parquet decoding and the counts release the GIL: chunks are read on a few threads,
    # in genome order, at most _READ_THREADS blocks in memory at once.
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        parts = list(pool.map(count_chunk, dataset.chunk_names))
    id_parts = [part[0] for part in parts]
    count_parts = [part[1] for part in parts]
    ids = pa.concat_arrays(id_parts) if id_parts else pa.array([], pa.string())
    counts = np.concatenate(count_parts, axis=1) if count_parts else np.zeros((len(COUNT_FIELDS), 0), np.int64)
    counts.setflags(write=False)
    with _memo_lock:
        _memo[key] = (ids, counts)
        while len(_memo) > _MEMO_DATASETS:
            _memo.popitem(last=False)
    return ids, counts


class Census:
    """Federated variant census / QC (see the module docstring)."""

    name = "census"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """Parses the thresholds; the variant list comes from round 0."""
        parameters = {
            "min_allele_count": _number(spec, "min_allele_count", 0, 2**31, integer=True),
            "min_call_rate": _number(spec, "min_call_rate", 0.0, 1.0),
            "hwe_p": _number(spec, "hwe_p", 0.0, 1.0),
            "maf": _number(spec, "maf", 0.0, 0.5),
            "max_samples_per_site": _number(spec, "max_samples_per_site", 1, 2**40, integer=True),
        }
        return {"parameters": parameters, "num_participants": len(participants), "variant_ids": None}

    def _encoding(self, state: Mapping[str, Any]) -> FixedPoint:
        clip = float(state["parameters"]["max_samples_per_site"])
        sites = int(state["num_participants"])
        ring = Ring.R32 if sites * clip <= Ring.R32.max_signed else Ring.R64
        return FixedPoint(ring, scale_bits=0, clip=clip)

    def layout(self, state: Mapping[str, Any], round_index: int) -> RoundLayout:
        """Round 0: the variant-key union; round 1: four count vectors and the sample count."""
        if round_index == KEYS_ROUND:
            return KeyUnion("variant_id", "variants each site holds at or above its minimum minor allele count")
        encoding = self._encoding(state)
        num_variants = len(state["variant_ids"])
        fields = [Field(name, (num_variants,), encoding) for name in COUNT_FIELDS]
        return Layout((*fields, Field("n_samples", (1,), encoding)))

    def site_step(
        self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext
    ) -> dict[str, np.ndarray]:
        """Round 0: the site's keys above its threshold; round 1: its counts over the union.

        Raises:
            PolicyRefusal: the job would publish variants below the site's own minimum
                allele count, or the site has more samples than the job's encoding allows.
        """
        parameters = state["parameters"]
        if int(parameters["min_allele_count"]) < site.min_allele_count:
            raise PolicyRefusal(
                f"site {site.name}: the census publishes variants with a minor allele count of "
                f"{parameters['min_allele_count']}, below this site's policy min_allele_count {site.min_allele_count}"
            )
        if dataset.num_samples > int(parameters["max_samples_per_site"]):
            raise PolicyRefusal(
                f"site {site.name}: {dataset.num_samples} samples exceed the job's max_samples_per_site "
                f"{parameters['max_samples_per_site']}; the sum could overflow"
            )
        if round_index == KEYS_ROUND:
            if not site.share_variant_keys:
                return {"variant_id": np.array([], dtype=str)}
            ids, counts = site_variant_counts(dataset)
            minor = minor_allele_count(counts[0], counts[1], counts[2])
            kept = pc.filter(ids, pa.array(minor >= site.min_allele_count)).to_numpy(zero_copy_only=False)
            return {"variant_id": np.unique(kept.astype(str))}
        union = pa.array(state["variant_ids"], pa.string())
        ids, counts = site_variant_counts(dataset)
        position = pc.fill_null(pc.index_in(ids, value_set=union), -1).to_numpy(zero_copy_only=False)
        present = position >= 0
        where = position[present].astype(np.int64)
        totals = {name: np.zeros(len(union), np.int64) for name in COUNT_FIELDS}
        for name, values in zip(COUNT_FIELDS, counts):
            np.add.at(totals[name], where, values[present])
        return {**totals, "n_samples": np.array([dataset.num_samples], np.int64)}

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Round 0: keep the union; round 1: the census table and its summary."""
        if round_index == KEYS_ROUND:
            keys = pa.array(np.asarray(total["variant_id"]).astype(str).tolist(), pa.string())
            unique = pc.unique(keys)
            union = unique.take(pc.array_sort_indices(unique)).to_pylist()
            if not union:
                raise InputError("census: no site shared any variant key; nothing to count (check the sites' share_variant_keys policy)")
            return {**state, "variant_ids": union}, False, None
        num_samples = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        counts = {name: np.asarray(total[name], np.int64) for name in COUNT_FIELDS}
        table = census_table(np.asarray(state["variant_ids"], dtype=str), counts, num_samples, state["parameters"])
        publishable = table.column("publishable").to_numpy(zero_copy_only=False)
        passing = table.column("pass_qc").to_numpy(zero_copy_only=False)
        filter_table = table.select(["variant_id", "pass_qc", "filter"])
        summary = {
            "analysis": self.name,
            "num_sites": int(num_sites),
            "num_samples": num_samples,
            "parameters": dict(state["parameters"]),
            "variants": {
                "total": int(table.num_rows),
                "publishable": int(np.count_nonzero(publishable)),
                "passing": int(np.count_nonzero(passing)),
                "failing": int(table.num_rows - np.count_nonzero(passing)),
            },
            "disclosure": (
                "round 0 revealed which variant IDs each site holds at or above its own minimum minor allele count "
                "(share_variant_keys); round 1 revealed only sums over the included sites"
            ),
            "schemas": {"census_variants": schemas.load("census_variants").version},
        }
        return dict(state), True, Result(summary=summary, tables={"census_variants": table, "filter": filter_table})


CENSUS = Census()
