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
   it does not have, plus its sample count and three 0/1 flags per variant:

   * ``below_min``: the site holds the variant but its own minor allele count there is
     non-zero and below its policy's ``min_allele_count`` (:func:`below_minimum`, as
     the GWAS's). The site then leaves that variant out: zeros, as if it did not hold
     it. Its small cell enters no sum; the variant is published from the other sites.
   * ``typed``: the site's counts of the variant are in the sum.
   * ``hwe_fail``: it is typed, and the site's own Hardy-Weinberg exact test over its
     own samples (plink2 ``--hwe`` semantics: all samples, no mid-p) gives p below the
     job's ``hwe_p``.

   The coordinator learns only the sums: the global counts, N, per variant how many
   sites typed it, left it out and failed Hardy-Weinberg, and from these the allele
   frequency, call rate and the filter every site applies identically.

The QC rules, against plink2's on pooled data (what a consortium's sites of different
ancestry need; each documented in ``schemas/census_variants.json``):

* **Hardy-Weinberg within sites.** plink2 ``--hwe`` tests the pooled samples; pooled
  across populations with different allele frequencies, a true variant departs from
  HWE (Wahlund effect) and fails, causal ones included. Here a variant fails
  (``hwe``) only when some site that typed it fails its own test, i.e. on evidence from
  that site's samples; the coordinator never sees a site's statistic, only the number
  of sites failing. With S sites typing a variant the family-wise rate under HWE is
  about S x ``hwe_p``. ``hwe_p_value`` still reports the pooled test, for reference.
  With ``hwe_controls`` (a 0/1 column of the samples table, e.g. a case/control
  phenotype) each site tests its controls only (the column's 0s), as PLINK 1.9's
  ``--hwe`` did for case/control data: a true association departs from HWE in cases.
  Under differential privacy the flags would depend on single people, so no site
  sends them and the filter uses the pooled test on the noisy counts.
* **Call rate over the samples that typed it.** plink2 ``--geno`` sees one file; here
  a variant a site does not hold is not a missing call: ``call_rate`` = called /
  (called + missing) over the sites that typed it, and ``n_not_typed`` (the other
  sites' samples) is reported beside it. ``min_sites_typed`` (default 1) fails
  (``sites_typed``) a variant typed by fewer sites.
* **chrX outside the pseudo-autosomal regions** (of the job's ``assembly``; plink2
  ``--split-par``): a male carries one X, so he counts once in the allele counts, the
  frequency and the minor allele count, and each site's Hardy-Weinberg test is
  Graffelman-Weir's with males haploid (plink2 ``--freq``, ``--hardy``, ``--hwe``). The
  sites also send their males' and females' genotype counts of those variants
  (:mod:`.census_chrx`).
* **A site's own minimum allele count** leaves that site out of the variant's sums
  (``n_sites_left_out``), instead of withholding the variant for everyone; a variant
  is published when its minor allele count over the sites that contribute reaches the
  job's ``min_allele_count`` (plink2 ``--mac`` on the pooled counts).

Counts are encoded exactly (``scale_bits=0``) in Z_2^32 when
``num_sites * max_samples_per_site`` fits its signed half, else in Z_2^64. A variant is
not publishable, and its counts and metrics are left out (null) of the result table,
when its minor allele count over the contributing sites is below the job's
``min_allele_count`` (filter ``min_allele_count``, or ``site_min_allele_count`` when
every site that holds it left it out). The filter of a variant that is not publishable
names only why it is withheld, never a check computed from its hidden counts.

Spec::

    analysis: census
    min_allele_count: 5        # publish threshold (global); each site also withholds variants below its own
    min_call_rate: 0.95        # thresholds of the filter (plink2 --geno / --hwe / --maf)
    hwe_p: 1.0e-6
    maf: 0.0
    max_samples_per_site: 10000000
    min_sites_typed: 1         # fewer sites typing a variant fail it (filter sites_typed)
    hwe_controls: null         # a 0/1 column: test HWE on its 0s (controls) only, as PLINK 1.9 did
    assembly: GRCh38           # whose chrX pseudo-autosomal regions count as autosomal (GRCh37 or GRCh38)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schemas
from pipeline.analyses.protocol import (
    GENOTYPES,
    Analysis,
    Contribution,
    KeyUnion,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
    dataset_sample_ids,
)
from pipeline.analyses.census_chrx import (
    FEMALE_FIELDS,
    MALE_FIELDS,
    X_FIELDS,
    site_x_counts,
    x_allele_counts,
    x_hwe_p,
    x_rows,
)
from pipeline.analyses.site_cache import SiteCache, dataset_blocks, dataset_fingerprint
from pipeline.analyses.sum_checks import refuse_impossible
from pipeline.assembly import ASSEMBLIES
from pipeline.dataset import Dataset, check_binary, numeric_column, reported_sex
from pipeline.encoding import Count, Integer, Ring, plan_layout
from pipeline.errors import ConfigurationError, InputError, ProtocolError
from pipeline.harmonize.variant_ids import duplicate_pairs
from pipeline.privacy import (
    PrivacyTerms,
    Sensitivity,
    Spend,
    noise_headroom,
    privacy_terms,
    release_noise,
    sample_discrete_gaussian,
    secret_generator,
)
from pipeline.parameters import Param, choice, integer, number, parse_params
from pipeline.stats.counts import count_variants
from pipeline.analyses.bounds import check_sample_bound
from pipeline.stats.hwe import hwe_exact_p

__all__ = [
    "CENSUS",
    "Census",
    "CensusParameters",
    "CensusState",
    "COUNT_FIELDS",
    "FLAG_FIELD",
    "HWE_FIELD",
    "TYPED_FIELD",
    "WITHHELD",
    "aligned_counts",
    "aligned_x_counts",
    "below_minimum",
    "census_sensitivity",
    "census_table",
    "check_census_table",
    "check_counts",
    "check_x_counts",
    "control_mask",
    "control_sample_ids",
    "hwe_failing",
    "minor_allele_count",
    "minor_count",
    "refuse_duplicate_ids",
    "shared_variant_ids",
    "site_below_minimum",
    "site_control_counts",
    "site_subset_counts",
    "site_variant_counts",
    "small_cells",
    "x_hwe_failing",
]

COUNT_FIELDS = ("n_hom_ref", "n_het", "n_hom_alt", "n_missing")
FLAG_FIELD = "below_min"
"""The counts round's per-variant flag: sites whose own minor allele count is non-zero and below their minimum."""
TYPED_FIELD = "typed"
"""The counts round's per-variant flag: the site's counts of the variant are in the sum."""
HWE_FIELD = "hwe_fail"
"""The counts round's per-variant flag: the site typed the variant and its own HWE exact test fails ``hwe_p``."""
WITHHELD = "site_min_allele_count"
"""The filter of a variant every site holding it left out (below its own minimum): nothing of it is summed."""
KEYS_ROUND = 0
COUNTS_ROUND = 1

PARAMS = {
    "min_allele_count": Param(5, integer(0, 2**31)),
    "min_call_rate": Param(0.95, number(0.0, 1.0)),
    "hwe_p": Param(1e-6, number(0.0, 1.0)),
    "maf": Param(0.0, number(0.0, 0.5)),
    "max_samples_per_site": Param(10_000_000, integer(1, 2**40)),
    "min_sites_typed": Param(1, integer(1, 100_000)),
    "hwe_controls": Param(None, lambda value: None if value is None else _column_name(value)),
    "assembly": Param("GRCh38", choice(*ASSEMBLIES)),
    "privacy": Param(None, lambda value: None if value is None else privacy_terms(value)),
}
"""The census' spec keys, defaults and checks."""


def _column_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a 0/1 column of the sites' samples tables (e.g. binary_trait)")
    return value


@dataclass(frozen=True)
class CensusParameters:
    """The census' thresholds (see the module docstring's spec)."""

    min_allele_count: int
    min_call_rate: float
    hwe_p: float
    maf: float
    max_samples_per_site: int
    privacy: PrivacyTerms | None = None
    min_sites_typed: int = 1
    hwe_controls: str | None = None
    assembly: str = "GRCh38"
    """Whose chrX pseudo-autosomal regions are autosomal; chrX outside them is counted as :mod:`.census_chrx` says."""

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> CensusParameters:
        """Checks a census spec and fills its defaults.

        Raises:
            ConfigurationError: naming the key, what was expected and what was given, or
                ``min_sites_typed`` above 1 or ``hwe_controls`` with privacy terms (the sites'
                flags are exact-only).
        """
        parameters = cls(**parse_params(spec, PARAMS, where="census"))
        if parameters.privacy is not None and (parameters.min_sites_typed > 1 or parameters.hwe_controls is not None):
            raise ConfigurationError(
                "census: min_sites_typed and hwe_controls need the sites' exact flags, which a differentially private "
                "census does not send (they would depend on single people); drop them or the privacy terms"
            )
        return parameters

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "privacy": None if self.privacy is None else self.privacy.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CensusParameters:
        privacy = data.get("privacy")
        return cls(**{**data, "privacy": None if privacy is None else PrivacyTerms.from_json(privacy)})


@dataclass(frozen=True)
class CensusState:
    """The census' public state: its thresholds, and after round 0 the variant union.

    Attributes:
        parameters: the job's thresholds.
        num_participants: sites invited (the bit budget is sized for all of them).
        variant_ids: the sorted union of the keys the sites shared; ``None`` before round 0 ends.
    """

    parameters: CensusParameters
    num_participants: int
    variant_ids: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"parameters": self.parameters.to_json(), "num_participants": self.num_participants,
                "variant_ids": None if self.variant_ids is None else list(self.variant_ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CensusState:
        ids = data["variant_ids"]
        return cls(CensusParameters.from_json(data["parameters"]), int(data["num_participants"]),
                   None if ids is None else tuple(str(v) for v in ids))

    @property
    def noise(self) -> Spend | None:
        """The counts round's noise under the job's privacy terms (``None``: exact, or before the union).

        Derived, never stored: every site computes it from the terms and the union
        itself, so a coordinator cannot hand out a smaller sigma in the state.
        """
        privacy = self.parameters.privacy
        if privacy is None or self.variant_ids is None:
            return None
        return _release_noise(privacy, len(self.variant_ids))

    @functools.cached_property
    def x_rows(self) -> np.ndarray:
        """Positions in the union of its chrX variants outside the PARs (:mod:`.census_chrx`)."""
        return x_rows(self.union, self.parameters.assembly)

    @property
    def union(self) -> tuple[str, ...]:
        """The variant union (round 1 on).

        Raises:
            InputError: round 0 has not ended yet.
        """
        if self.variant_ids is None:
            raise InputError("census: the variant union is not known before the key round ends")
        return self.variant_ids


def minor_count(called: np.ndarray, alt_count: np.ndarray) -> np.ndarray:
    """min(AC, AN - AC) of ``called`` diploid samples carrying ``alt_count`` ALT alleles.

    int64 for integer counts; float64 for a float ``alt_count`` (a dosage sum, which
    rounding would turn from a small cell into 0 or the minimum).
    """
    called = np.asarray(called, np.int64)
    alt_count = np.asarray(alt_count)
    alt_count = alt_count.astype(np.float64 if np.issubdtype(alt_count.dtype, np.floating) else np.int64, copy=False)
    return np.minimum(alt_count, 2 * called - alt_count)


def small_cells(minor: np.ndarray, site: SiteContext) -> np.ndarray:
    """1 where a site's own minor allele count is non-zero and below its policy minimum (int64 0/1 flags).

    As DataSHIELD's ``nfilter.tab``, a count of 0 is not a small cell: no carrier to identify.
    """
    return ((minor > 0) & (minor < site.min_allele_count)).astype(np.int64)


def minor_allele_count(n_hom_ref: np.ndarray, n_het: np.ndarray, n_hom_alt: np.ndarray) -> np.ndarray:
    """min(AC, AN - AC) among called samples: the count disclosure thresholds apply to."""
    het, hom_alt = np.asarray(n_het, np.int64), np.asarray(n_hom_alt, np.int64)
    return minor_count(np.asarray(n_hom_ref, np.int64) + het + hom_alt, het + 2 * hom_alt)


def below_minimum(called: np.ndarray, alt_count: np.ndarray, site: SiteContext) -> np.ndarray:
    """1 where the site's own minor allele count of a variant is non-zero and below its policy minimum.

    As DataSHIELD's ``nfilter.tab``, a count of 0 is not a small cell: no carrier to
    identify. A variant the site does not hold has no calls, hence a count of 0.

    Args:
        called: (variants,) the site's samples with a called genotype.
        alt_count: (variants,) ALT alleles among them (a dosage sum: any non-zero one
            below the minimum is a small cell).
        site: the site (its ``min_allele_count``).

    Returns:
        (variants,) int64 0/1 flags.
    """
    return small_cells(minor_count(called, alt_count), site)


def check_counts(counts: Mapping[str, np.ndarray], num_samples: int, variant_ids: Sequence[str], *,
                 below_min: np.ndarray, num_sites: int, typed: np.ndarray | None = None,
                 hwe_fail: np.ndarray | None = None) -> None:
    """Refuses summed counts that no honest sites can give.

    Every sample of every included site is hom-ref, het, hom-alt, missing or not typed
    at each variant, once: so N is at least 0, each count is at least 0, and the four
    counts add up to at most N -- equivalently ``n_not_typed >= 0``, ``call_rate <= 1``
    and ``allele_number = 2 (n_hom_ref + n_het + n_hom_alt) <= 2N``; ``allele_count <=
    allele_number`` then follows. Each site flags a variant at most once, so
    ``below_min`` is in [0, the number of sites]. A total beyond these means a site sent
    values beyond its own data (or counted a variant twice); publishing it would
    publish a lie.

    Raises:
        ProtocolError: naming the first impossible variant (its ID) and the invariant.
    """
    refuse_impossible("census", "n_samples", num_samples, num_samples < 0, "at least 0")
    for name in COUNT_FIELDS:
        values = np.asarray(counts[name], np.int64)
        refuse_impossible("census", name, values, values < 0, "at least 0", labels=variant_ids, noun="variant")
    called = np.sum([np.asarray(counts[name], np.int64) for name in COUNT_FIELDS[:3]], axis=0)
    called_or_missing = called + np.asarray(counts["n_missing"], np.int64)
    impossible = np.flatnonzero(called_or_missing > num_samples)
    if impossible.size:
        first = int(impossible[0])
        rate = f"{called[first] / num_samples:.6g}" if num_samples > 0 else "undefined"
        raise ProtocolError(
            f"census: variant {variant_ids[first]}: n_hom_ref + n_het + n_hom_alt + n_missing = "
            f"{int(called_or_missing[first])} exceeds n_samples = {num_samples}, so n_not_typed would be "
            f"{num_samples - int(called_or_missing[first])} < 0, call_rate {rate} and allele_number "
            f"{2 * int(called[first])} against 2N = {2 * num_samples} ({impossible.size} such variants); "
            "a site sent counts beyond its own samples (or holds the variant twice), so nothing is published"
        )
    flags = np.asarray(below_min, np.int64)
    refuse_impossible("census", FLAG_FIELD, flags, (flags < 0) | (flags > num_sites), f"in [0, the {num_sites} sites]",
                      labels=variant_ids, noun="variant")
    if typed is None or hwe_fail is None:
        return
    typed = np.asarray(typed, np.int64)
    hwe_fail = np.asarray(hwe_fail, np.int64)
    refuse_impossible("census", TYPED_FIELD, typed, (typed < 0) | (typed + flags > num_sites),
                      f"in [0, the {num_sites} sites minus those that left it out]", labels=variant_ids, noun="variant")
    # A typed site has a sample in one of the four classes; a variant nobody typed has none.
    refuse_impossible("census", TYPED_FIELD, typed, (typed > called_or_missing) | ((typed == 0) & (called_or_missing > 0)),
                      "at most n_hom_ref + n_het + n_hom_alt + n_missing = {limit}, and 0 only when that is 0",
                      limit=called_or_missing, labels=variant_ids, noun="variant")
    refuse_impossible("census", HWE_FIELD, hwe_fail, (hwe_fail < 0) | (hwe_fail > typed), "in [0, the sites that typed it = {limit}]",
                      limit=typed, labels=variant_ids, noun="variant")


def check_x_counts(counts: Mapping[str, np.ndarray], by_sex: Mapping[str, np.ndarray], x_rows: np.ndarray,
                   variant_ids: Sequence[str]) -> None:
    """Refuses males' and females' counts that no honest sites give: each at least 0, the two at most the total.

    Raises:
        ProtocolError: naming the first impossible variant and the field.
    """
    labels = [variant_ids[int(i)] for i in x_rows]
    for name, male, female in zip(COUNT_FIELDS[:3], MALE_FIELDS, FEMALE_FIELDS):
        total = np.asarray(counts[name], np.int64)[x_rows]
        for field in (male, female):
            values = np.asarray(by_sex[field], np.int64)
            refuse_impossible("census", field, values, values < 0, "at least 0", labels=labels, noun="variant")
        both = np.asarray(by_sex[male], np.int64) + np.asarray(by_sex[female], np.int64)
        refuse_impossible("census", f"{male} + {female}", both, both > total, f"at most {name} = {{limit}}", limit=total,
                          labels=labels, noun="variant")


def check_census_table(table: pa.Table, num_samples: int, *, exact: bool = True, x_rows: np.ndarray | None = None) -> None:
    """Refuses a census_variants table whose published values break the census' invariants.

    Checked on the publishable rows (the others are null), as a last guard between the
    sums and what is published: ``0 <= n_not_typed``; ``0 <= call_rate <= 1``;
    ``0 <= allele_count <= allele_number <= 2N``; ``allele_number = 2 x (n_hom_ref +
    n_het + n_hom_alt)``; ``0 <= alt_allele_frequency <= 1``; and for exact sums the
    five classes add up to N. Noisy (differentially private) sums are clamped into
    range before the table is made, so only the relations that clamping keeps are
    checked for them (not the sum to N, nor ``allele_number <= 2N``). At ``x_rows`` (chrX outside the
    PARs, a male counted once: :mod:`.census_chrx`) ``allele_number`` is at most, not equal to, twice the calls.

    Raises:
        ProtocolError: naming the first variant (its ID) and the invariant it breaks.
    """
    publishable = table.column("publishable").to_numpy(zero_copy_only=False).astype(bool)
    ids = table.column("variant_id").to_pylist()

    def column(name: str) -> np.ndarray:
        return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    hom_ref, het, hom_alt, missing, not_typed = (column(name) for name in (*COUNT_FIELDS, "n_not_typed"))
    call_rate, allele_count, allele_number = column("call_rate"), column("allele_count"), column("allele_number")
    frequency = column("alt_allele_frequency")
    n = float(num_samples)
    haploid = np.zeros(len(ids), bool)
    if x_rows is not None:
        haploid[x_rows] = True
    diploid_number = 2 * (hom_ref + het + hom_alt)
    rules: list[tuple[str, np.ndarray, np.ndarray, str, np.ndarray | None]] = [
        ("n_not_typed", not_typed, not_typed < 0, "at least 0", None),
        ("call_rate", call_rate, (call_rate < 0) | (call_rate > 1), "in [0, 1]", None),
        ("allele_count", allele_count, allele_count < 0, "at least 0", None),
        ("allele_count", allele_count, allele_count > allele_number, "at most allele_number = {limit}", allele_number),
        ("allele_number", allele_number, np.where(haploid, allele_number > diploid_number, allele_number != diploid_number),
         "2 x (n_hom_ref + n_het + n_hom_alt) = {limit} (at most that on chrX outside the PARs)", diploid_number),
        ("alt_allele_frequency", frequency, (frequency < 0) | (frequency > 1), "in [0, 1]", None),
    ]
    if exact:
        rules += [
            ("allele_number", allele_number, allele_number > 2 * n, f"at most 2N = {2 * num_samples}", None),
            ("n_hom_ref + n_het + n_hom_alt + n_missing + n_not_typed", hom_ref + het + hom_alt + missing + not_typed,
             hom_ref + het + hom_alt + missing + not_typed != n, f"N = {num_samples}", None),
        ]
    with np.errstate(invalid="ignore"):
        for field, value, broken, expected, limit in rules:
            refuse_impossible("census", field, value, publishable & broken, expected,
                              limit=limit, labels=ids, noun="variant")


def census_sensitivity(num_variants: int) -> Sensitivity:
    """One person's largest change of the DP counts round: one of the four counts per variant, and ``n_samples``.

    Adding or removing a person moves exactly one of hom-ref, het, hom-alt and missing
    by 1 at each union variant the site holds (0 at the others) and ``n_samples`` by 1:
    ``l2 = sqrt(V + 1)``, ``l1 = V + 1``. So the noise grows like ``sqrt(V)``: the
    privacy of a person is over all of their genotypes in the release at once.
    """
    if num_variants < 0:
        raise ConfigurationError(f"census: num_variants must be >= 0, got {num_variants}")
    return Sensitivity(l2=math.sqrt(num_variants + 1), l1=float(num_variants + 1))


@functools.lru_cache(maxsize=64)
def _release_noise(privacy: PrivacyTerms, num_variants: int) -> Spend:
    return release_noise(privacy, census_sensitivity(num_variants))


def census_table(
    variant_id: np.ndarray, counts: Mapping[str, np.ndarray], num_samples: int, parameters: CensusParameters, *,
    below_min: np.ndarray, typed: np.ndarray | None = None, hwe_fail: np.ndarray | None = None,
    by_sex: Mapping[str, np.ndarray] | None = None, x_rows: np.ndarray | None = None,
) -> pa.Table:
    """The census_variants table from global counts (see ``schemas/census_variants.json``).

    A variant is publishable when its minor allele count over the contributing sites
    reaches the job's ``min_allele_count``; otherwise its counts and metrics are null and
    its filter names only why it is withheld (``site_min_allele_count`` when every site
    holding it left it out, else ``min_allele_count``): a check computed from hidden
    counts (call rate, HWE, MAF) would reveal something of them. The rules are the
    module docstring's.

    Args:
        variant_id: (variants,) the union's keys.
        counts: the four global count arrays (int64).
        num_samples: N, all samples of the sites included in the sum.
        parameters: the job's thresholds (min_allele_count, min_call_rate, hwe_p, maf, min_sites_typed).
        below_min: (variants,) the summed flags of the sites that left the variant out.
        typed: (variants,) the sites whose counts are in the sum; hwe_fail: (variants,) those
            among them failing their own HWE test. ``None`` (a differentially private
            census): HWE is tested on the pooled counts and ``min_sites_typed`` not applied.
        by_sex: the :data:`~.census_chrx.X_FIELDS` sums of the union's chrX variants outside the PARs, at
            ``x_rows``: there a male counts once in the allele counts, frequency and minor allele count, and
            ``hwe_p_value`` is the Graffelman-Weir test (:mod:`.census_chrx`); ``None``: chrX as an autosome.
    """
    hom_ref, het, hom_alt, missing = (np.asarray(counts[name], np.int64) for name in COUNT_FIELDS)
    called = hom_ref + het + hom_alt
    typed_samples = called + missing
    not_typed = np.maximum(num_samples - typed_samples, 0)  # only noisy counts can make it negative
    allele_count = het + 2 * hom_alt
    allele_number = 2 * called
    hwe_p = hwe_exact_p(hom_ref, het, hom_alt)
    if by_sex is not None and x_rows is not None and x_rows.size:
        allele_count[x_rows], allele_number[x_rows] = x_allele_counts({k: v[x_rows] for k, v in counts.items()}, by_sex)
        hwe_p[x_rows] = x_hwe_p(by_sex)
    with np.errstate(invalid="ignore", divide="ignore"):
        call_rate = np.where(typed_samples > 0, called / np.maximum(typed_samples, 1), 0.0)
        frequency = np.where(allele_number > 0, allele_count / np.maximum(allele_number, 1), np.nan)
    left_out = np.asarray(below_min, np.int64)
    below_job_minimum = np.minimum(allele_count, allele_number - allele_count) < parameters.min_allele_count
    publishable = ~below_job_minimum
    minor_frequency = np.minimum(frequency, 1.0 - frequency)
    exact = typed is not None and hwe_fail is not None
    with np.errstate(invalid="ignore"):
        failures = {
            "call_rate": call_rate < parameters.min_call_rate,
            "hwe": np.asarray(hwe_fail, np.int64) > 0 if exact else hwe_p < parameters.hwe_p,
            "maf": (np.isnan(minor_frequency) | (minor_frequency < parameters.maf)) if parameters.maf > 0 else np.zeros(called.shape, bool),
            "sites_typed": (np.asarray(typed, np.int64) < parameters.min_sites_typed) if exact else np.zeros(called.shape, bool),
        }
    reasons = np.full(called.shape, "", dtype=object)
    for reason, mask in failures.items():
        reasons[mask] = np.where(reasons[mask] == "", reason, reasons[mask] + ";" + reason)
    reasons[reasons == ""] = "PASS"
    reasons[below_job_minimum] = "min_allele_count"
    reasons[below_job_minimum & (typed_samples == 0) & (left_out > 0)] = WITHHELD
    passing = reasons == "PASS"
    hidden = ~publishable
    unknown = np.ones(called.shape, bool)

    def ints(values: np.ndarray, mask: np.ndarray = hidden) -> pa.Array:
        return pa.array(values, pa.int64(), mask=mask)

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
            "n_sites_typed": ints(np.asarray(typed, np.int64), hidden) if exact else ints(np.zeros(called.shape, np.int64), unknown),
            "n_sites_hwe_fail": ints(np.asarray(hwe_fail, np.int64), hidden) if exact else ints(np.zeros(called.shape, np.int64), unknown),
            "n_sites_left_out": ints(left_out, np.zeros(called.shape, bool)) if exact else ints(left_out, unknown),
            "publishable": pa.array(publishable, pa.bool_()),
            "pass_qc": pa.array(passing, pa.bool_()),
            "filter": pa.array(reasons.astype(str), pa.string()),
        }
    )
    return schemas.conform(table, "census_variants", source="census result")


def site_variant_counts(dataset: Dataset, cache: SiteCache) -> tuple[pa.Array, np.ndarray]:
    """A dataset's variant IDs (genome order) and their hom-ref, het, hom-alt, missing counts.

    Both census rounds need them, so they are kept in the job's ``cache``, keyed by the
    files' identity (a dataset rewritten in between is read again); the genotypes come
    through :func:`~pipeline.analyses.site_cache.dataset_blocks` (read once per job).

    Returns:
        (string array of IDs, int64 (4, variants) counts in :data:`COUNT_FIELDS` order).
    """
    return cache.get(("census.site_variant_counts", dataset_fingerprint(dataset)), lambda: _count_dataset(dataset, cache))


def shared_variant_ids(dataset: Dataset, site: SiteContext) -> pa.Array:
    """The variant IDs a site sends in the census' key union (genome order).

    None without ``share_variant_keys``; else those whose minor allele count over the
    site's samples reaches its policy's ``min_allele_count``. This is what the key union
    reveals of the site, so a later round that names only these variants (the GWAS's rs
    ID round) reveals no other variant it holds.
    """
    if not site.share_variant_keys:
        return pa.array([], pa.string())
    ids, counts = site_variant_counts(dataset, site.cache)
    minor = minor_allele_count(counts[0], counts[1], counts[2])
    return pc.filter(ids, pa.array(minor >= site.min_allele_count))


def _count_dataset(dataset: Dataset, cache: SiteCache) -> tuple[pa.Array, np.ndarray]:
    id_parts, count_parts = [], []
    for block in dataset_blocks(dataset, cache):
        id_parts.append(block.variants.column("variant_id").combine_chunks())
        count_parts.append(np.stack(count_variants(block.call_dosage)))
    ids = pa.concat_arrays(id_parts) if id_parts else pa.array([], pa.string())
    refuse_duplicate_ids(dataset, ids, [len(part) for part in id_parts])
    counts = np.concatenate(count_parts, axis=1) if count_parts else np.zeros((len(COUNT_FIELDS), 0), np.int64)
    counts.setflags(write=False)
    return ids, counts


def _controls(dataset: Dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """The site's sample IDs and, per sample, whether its ``column`` is 0 (a control), from the samples table alone.

    Raises:
        SpecMismatch: the column is missing, not numeric or not coded 0/1 (a pre-flight code).
    """
    samples = dataset.samples()
    values = numeric_column(dataset, samples, column, role="hwe_controls column")
    check_binary(dataset, column, values, role="hwe_controls column")
    return np.asarray([str(s) for s in samples.column("sample_id").to_pylist()], dtype=object), values == 0


def control_sample_ids(dataset: Dataset, column: str) -> frozenset[str]:
    """The site's samples whose ``column`` is 0 (controls), from the samples table alone.

    Raises:
        SpecMismatch: the column is missing, not numeric or not coded 0/1 (a pre-flight code).
    """
    ids, is_control = _controls(dataset, column)
    return frozenset(ids[is_control].tolist())


def control_mask(dataset: Dataset, column: str) -> np.ndarray:
    """(samples,) bool in the dataset's sample order: the samples whose ``column`` is 0 (controls).

    Raises:
        SpecMismatch: the column is missing, not numeric or not coded 0/1 (a pre-flight code).
    """
    return _controls(dataset, column)[1]


def site_subset_counts(dataset: Dataset, cache: SiteCache, samples: np.ndarray) -> np.ndarray:
    """(4, variants) :data:`COUNT_FIELDS` over the samples where ``samples`` (dataset order) is true.

    The variants are in :func:`site_variant_counts`' order; not cached (a subset is the caller's).
    """
    parts = [np.stack(count_variants(np.compress(samples, block.call_dosage, axis=1)))
             for block in dataset_blocks(dataset, cache)]
    return np.concatenate(parts, axis=1) if parts else np.zeros((len(COUNT_FIELDS), 0), np.int64)


def site_control_counts(dataset: Dataset, cache: SiteCache, column: str) -> tuple[pa.Array, np.ndarray]:
    """:func:`site_variant_counts` over the samples whose ``column`` is 0 only (HWE in controls)."""
    def count() -> tuple[pa.Array, np.ndarray]:
        return site_variant_counts(dataset, cache)[0], site_subset_counts(dataset, cache, control_mask(dataset, column))

    return cache.get(("census.site_control_counts", column, dataset_fingerprint(dataset)), count)


def aligned_counts(targets: pa.Array, ids: pa.Array, counts: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A site's counts (``ids``, (4, variants)) laid out on the ``targets`` IDs: zeros where it does not hold one.

    Returns:
        ``{count field: (targets,) int64}`` and (targets,) bool: which targets the site holds.
    """
    position = pc.fill_null(pc.index_in(ids, value_set=targets), -1).to_numpy(zero_copy_only=False)
    present = position >= 0
    where = position[present].astype(np.int64)
    totals = {name: np.zeros(len(targets), np.int64) for name in COUNT_FIELDS}
    for name, values in zip(COUNT_FIELDS, counts):
        np.add.at(totals[name], where, values[present])
    held = np.zeros(len(targets), bool)
    held[where] = True
    return totals, held


def site_below_minimum(counts: Mapping[str, np.ndarray], site: SiteContext) -> np.ndarray:
    """:func:`below_minimum` of a site's :data:`COUNT_FIELDS` (0/1 per variant): the variants it leaves out."""
    called = counts["n_hom_ref"] + counts["n_het"] + counts["n_hom_alt"]
    return below_minimum(called, counts["n_het"] + 2 * counts["n_hom_alt"], site)


def hwe_failing(counts: Mapping[str, np.ndarray], hwe_p: float) -> np.ndarray:
    """(variants,) bool: the Hardy-Weinberg exact test over the counted samples gives p below ``hwe_p``.

    plink2 ``--hwe`` semantics (no mid-p); ``hwe_p`` 0 tests nothing, and a variant with
    no call never fails (its p-value is NaN).
    """
    if hwe_p <= 0:
        return np.zeros(len(counts["n_het"]), bool)
    return hwe_exact_p(counts["n_hom_ref"], counts["n_het"], counts["n_hom_alt"]) < hwe_p


def refuse_duplicate_ids(dataset: Dataset, ids: pa.Array, chunk_sizes: Sequence[int]) -> None:
    """Refuses a dataset holding a variant ID twice: the site would count its samples twice there.

    The coordinator sees such a variant only when the excess is above every site's
    samples (:func:`check_counts`); with other sites' not-typed samples to hide it, it
    would publish a call rate and allele number counted twice. So the site checks its
    own rows before it sends anything (``genofed ingest`` refuses such files).

    Raises:
        InputError: naming the dataset, the variant ID, the chunks and the fix.
    """
    pairs = duplicate_pairs(ids)
    if not pairs.size:
        return
    ends = np.cumsum(np.asarray(chunk_sizes, np.int64))
    names = dataset.chunk_names
    first, repeated = (int(row) for row in pairs[0])
    chunks = dict.fromkeys(names[int(np.searchsorted(ends, row, side="right"))] for row in (first, repeated))
    where = "in " + " and ".join(chunks)
    raise InputError(
        f"{dataset.path}: variant {ids[repeated].as_py()} is stored twice ({where}; {len(pairs)} repeated row(s) in all), "
        "so its samples would be counted twice; re-ingest the VCF with 'genofed ingest', which refuses duplicate records"
    )


def aligned_x_counts(dataset: Dataset, site: SiteContext, assembly: str, targets: pa.Array,
                     samples: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The site's :data:`~.census_chrx.X_FIELDS` over ``targets`` (chrX IDs outside the PARs), zeros where it lacks one.

    Args:
        samples: (dataset samples,) bool, the samples to count (e.g. the controls); ``None``: all.
    """
    ids, counts = site_x_counts(dataset, site.cache, assembly, samples)
    out = {}
    for names, part in ((MALE_FIELDS, counts[:3]), (FEMALE_FIELDS, counts[3:])):
        aligned, _ = aligned_counts(targets, ids, np.vstack([part, np.zeros((1, part.shape[1]), np.int64)]))
        out.update({name: aligned[field] for name, field in zip(names, COUNT_FIELDS)})
    return out


def x_hwe_failing(dataset: Dataset, site: SiteContext, assembly: str, targets: pa.Array, hwe_p: float,
                  samples: np.ndarray | None = None) -> np.ndarray | None:
    """(targets,) bool: the site's Graffelman-Weir test over its samples of known sex gives p below ``hwe_p``.

    ``None`` where the site reports no sex at all: it then tests its chrX as an autosome (:mod:`.census_chrx`).
    """
    if not np.any(reported_sex(dataset.samples()) > 0):
        return None
    return x_hwe_p(aligned_x_counts(dataset, site, assembly, targets, samples)) < hwe_p


_DP_DISCLOSURE = (
    "round 0 revealed which variant IDs each site holds at or above its own minimum minor allele count "
    "(share_variant_keys), outside the differential-privacy guarantee; round 1 revealed only sums over the included "
    "sites of counts to which every site added discrete Gaussian noise: the counts and everything computed from them "
    "are (epsilon, delta)-differentially private for each person (see privacy)"
)


class Census(Analysis[CensusState]):
    """Federated variant census / QC (see the module docstring)."""

    name = "census"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> CensusState:
        """Parses the thresholds; the variant list comes from round 0."""
        return CensusState(CensusParameters.parse(spec), len(participants))

    def state_from_json(self, data: Mapping[str, Any]) -> CensusState:
        return CensusState.from_json(data)

    def layout(self, state: CensusState, round_index: int) -> RoundLayout:
        """Round 0: the variant-key union; round 1: four count vectors, the three site flags and the sample count.

        Counts are exact, in Z_2^32 when the sum of every invited site fits, else Z_2^64.
        """
        if round_index == KEYS_ROUND:
            return KeyUnion("variant_id", "variants each site holds at or above its minimum minor allele count")
        n_max = state.parameters.max_samples_per_site
        num_variants = len(state.union)
        noise = state.noise
        if noise is not None:
            # Each site's counts plus its noise: room for the noise on both sides (it wraps with probability < 2^-40).
            room = noise_headroom(noise.sigma, len(COUNT_FIELDS) * num_variants + 1)
            noisy = [Integer(name, (num_variants,), n_max + room) for name in COUNT_FIELDS]
            return plan_layout([*noisy, Integer("n_samples", (1,), n_max + room)], state.num_participants,
                               rings=(Ring.R32, Ring.R64))
        fields = [Count(name, (num_variants,), n_max) for name in COUNT_FIELDS]
        flags = [Count(name, (num_variants,), 1) for name in (FLAG_FIELD, TYPED_FIELD, HWE_FIELD)]
        on_x = len(state.x_rows)
        by_sex = [Count(name, (on_x,), n_max) for name in X_FIELDS] if on_x else []
        return plan_layout([*fields, *flags, *by_sex, Count("n_samples", (1,), n_max)], state.num_participants,
                           rings=(Ring.R32, Ring.R64))

    def privacy_spend(self, state: CensusState, round_index: int) -> Spend | None:
        """The counts round's noise and privacy, when the job asked for differential privacy."""
        return state.noise if round_index == COUNTS_ROUND else None

    def contributions(self, state: CensusState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """Every sample of the site, over the genotypes.

        The counts round counts every sample of the dataset at every variant (a missing
        call is counted as missing, a sample never drops out), and ``n_samples`` is the
        dataset's sample count; the key round's keys come from the same samples. With
        ``hwe_controls`` the HWE flags come from the controls, a second set.

        Raises:
            SpecMismatch: ``hwe_controls`` is missing, not numeric or not coded 0/1.
        """
        every = Contribution(dataset_sample_ids(dataset), (GENOTYPES,))
        column = state.parameters.hwe_controls
        if column is None:
            return (every,)
        controls = Contribution(control_sample_ids(dataset, column), tuple(sorted((column, GENOTYPES))))
        return tuple(c for c in (every, controls) if c.samples)

    def site_step(self, state: CensusState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """Round 0: the site's keys above its threshold; round 1: its counts and flags over the union.

        A publish threshold below the site's own ``min_allele_count`` is no reason to
        decline: the site leaves out (and flags) the variants where its own minor allele
        count is non-zero and below its minimum, and tests Hardy-Weinberg on its own
        samples (module docstring).

        Raises:
            PolicyRefusal: (code ``policy``) the site has more samples than the job's
                encoding allows (``max_samples_per_site``).
        """
        parameters = state.parameters
        check_sample_bound(dataset.num_samples, parameters.max_samples_per_site, site=site.name,
                           public="the site has more samples than the job's max_samples_per_site allows")
        if round_index == KEYS_ROUND:
            kept = shared_variant_ids(dataset, site).to_numpy(zero_copy_only=False)
            return {"variant_id": np.unique(kept.astype(str))}
        union = pa.array(state.union, pa.string())
        ids, counts = site_variant_counts(dataset, site.cache)
        totals, held = aligned_counts(union, ids, counts)
        n_samples = np.array([dataset.num_samples], np.int64)
        noise = state.noise
        if noise is not None:
            # Differential privacy: the noise protects small cells, so no flag (it would depend on one person).
            rng = secret_generator()
            sigma = noise.sigma
            noisy = {name: values + sample_discrete_gaussian(sigma, values.shape, rng=rng) for name, values in totals.items()}
            return {**noisy, "n_samples": n_samples + sample_discrete_gaussian(sigma, (1,), rng=rng)}
        on_x = state.x_rows
        x_ids = pa.array(np.asarray(state.union, dtype=object)[on_x].tolist(), pa.string())
        by_sex = aligned_x_counts(dataset, site, parameters.assembly, x_ids) if on_x.size else {}
        flags = site_below_minimum(totals, site)
        if on_x.size:  # a male counted once (census_chrx)
            allele_count, allele_number = x_allele_counts({k: v[on_x] for k, v in totals.items()}, by_sex)
            flags[on_x] = small_cells(np.minimum(allele_count, allele_number - allele_count), site)
        left_out = flags.astype(bool)
        for values in totals.values():
            values[left_out] = 0  # the small cell enters no sum: the variant is counted over the other sites
        for values in by_sex.values():
            values[left_out[on_x]] = 0
        typed = held & ~left_out
        failing = np.zeros(len(union), bool)
        if parameters.hwe_p > 0:
            tested, subset = totals, None
            if parameters.hwe_controls is not None:
                subset = control_mask(dataset, parameters.hwe_controls)
                tested, _ = aligned_counts(union, ids, site_control_counts(dataset, site.cache, parameters.hwe_controls)[1])
            failing = typed & hwe_failing(tested, parameters.hwe_p)
            x_failing = x_hwe_failing(dataset, site, parameters.assembly, x_ids, parameters.hwe_p, subset) if on_x.size else None
            if x_failing is not None:
                failing[on_x] = typed[on_x] & x_failing
        return {**totals, FLAG_FIELD: flags, TYPED_FIELD: typed.astype(np.int64), HWE_FIELD: failing.astype(np.int64),
                **by_sex, "n_samples": n_samples}

    def coordinator_step(
        self, state: CensusState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[CensusState]:
        """Round 0: keep the union; round 1: the census table and its summary.

        Raises:
            InputError: no site shared a key (round 0).
            ProtocolError: counts or flags no honest sites give (:func:`check_counts`), or a table
                breaking the census' invariants (:func:`check_census_table`).
        """
        if round_index == KEYS_ROUND:
            union = tuple(np.asarray(total["variant_id"]).astype(str).tolist())  # sorted by the runtime
            if not union:
                raise InputError("census: no site shared any variant key; nothing to count (check the sites' share_variant_keys policy)")
            return dataclasses.replace(state, variant_ids=union), False, None
        num_samples = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        counts = {name: np.asarray(total[name], np.int64) for name in COUNT_FIELDS}
        noise = state.noise
        typed: np.ndarray | None = None
        hwe_fail: np.ndarray | None = None
        by_sex: dict[str, np.ndarray] | None = None
        if noise is None:
            below_min = np.asarray(total[FLAG_FIELD], np.int64)
            typed, hwe_fail = (np.asarray(total[name], np.int64) for name in (TYPED_FIELD, HWE_FIELD))
            check_counts(counts, num_samples, state.union, below_min=below_min, num_sites=num_sites, typed=typed,
                         hwe_fail=hwe_fail)
            if state.x_rows.size:
                by_sex = {name: np.asarray(total[name], np.int64) for name in X_FIELDS}
                check_x_counts(counts, by_sex, state.x_rows, state.union)
        else:
            # Noisy sums: what is published is computed from them (post-processing keeps the guarantee).
            counts = {name: np.maximum(values, 0) for name, values in counts.items()}
            num_samples = max(num_samples, 0)
            below_min = np.zeros(len(state.union), np.int64)
        table = census_table(np.asarray(state.union, dtype=str), counts, num_samples, state.parameters, below_min=below_min,
                             typed=typed, hwe_fail=hwe_fail, by_sex=by_sex, x_rows=state.x_rows)
        check_census_table(table, num_samples, exact=noise is None, x_rows=state.x_rows if by_sex is not None else None)
        publishable = table.column("publishable").to_numpy(zero_copy_only=False)
        passing = table.column("pass_qc").to_numpy(zero_copy_only=False)
        filter_table = table.select(["variant_id", "pass_qc", "filter"])
        summary = {
            "analysis": self.name,
            "num_sites": int(num_sites),
            "num_samples": num_samples,
            "parameters": state.parameters.to_json(),
            "variants": {
                "total": int(table.num_rows),
                "publishable": int(np.count_nonzero(publishable)),
                "with_sites_left_out": int(np.count_nonzero(below_min > 0)),
                "passing": int(np.count_nonzero(passing)),
                "failing": int(table.num_rows - np.count_nonzero(passing)),
            },
            "disclosure": _DP_DISCLOSURE if noise is not None else (
                "round 0 revealed which variant IDs each site holds at or above its own minimum minor allele count "
                "(share_variant_keys); round 1 revealed only sums over the included sites, among them per variant the "
                "number of sites that typed it, that left it out because their own minor allele count is below their "
                "minimum (their counts are not in the sums), and that fail their own Hardy-Weinberg test"
            ),
            "privacy": None if noise is None else {
                **noise.to_json(), "sites_adding_noise": int(num_sites),
                "count_noise_sd": float(noise.sigma * math.sqrt(num_sites)),
            },
            "schemas": {"census_variants": schemas.load("census_variants").version},
        }
        return state, True, Result(summary=summary, tables={"census_variants": table, "filter": filter_table})


CENSUS = Census()
