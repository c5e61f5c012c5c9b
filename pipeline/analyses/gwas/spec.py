"""The GWAS spec: one table of parameters, their frozen form, and the bounds they imply.

Every key of a GWAS job spec is declared once in :data:`PARAMS` (its default and its
check); :class:`GwasParameters` is the checked, typed result that travels in the job's
state. The census thresholds reuse the census' own checks, so a GWAS refuses at
submission what its census phase would refuse later.

The parameters also bound what one site may contribute to a secure sum
(:meth:`GwasParameters.statistic_bound`), and with the number of sites that bound fixes
how many fractional bits each fixed-point field keeps: :func:`plan_regression_layout`
is the one place the regression's layouts are planned.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.analyses.census import PARAMS as CENSUS_PARAMS
from pipeline.analyses.gwas.privacy import census_terms
from pipeline.analyses.selection import SELECTION_PARAMS
from pipeline.assembly import ASSEMBLIES
from pipeline.encoding import Declaration, Layout, Ring, plan_layout
from pipeline.errors import ConfigurationError
from pipeline.parameters import (
    Param,
    boolean,
    choice,
    integer,
    mapping,
    names,
    number,
    optional,
    parse_params,
)
from pipeline.privacy import PrivacyTerms

__all__ = [
    "MAX_SCALE_BITS",
    "MIN_MOMENT_SCALE_BITS",
    "MIN_SCALE_BITS",
    "PARAMS",
    "GwasParameters",
    "plan_regression_layout",
]

MAX_SCALE_BITS = 40
"""Most fractional bits a statistic keeps (float64 holds 53; the rest is the sum's headroom)."""
MIN_SCALE_BITS = 20
"""Fewest fractional bits a per-variant statistic may keep (refused below)."""
MIN_MOMENT_SCALE_BITS = 2
"""Fewest fractional bits of the raw moments: they only standardize, and the genotype's fit
does not depend on the exact shift and scale."""


def _column_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a column of the sites' phenotype tables (e.g. quant_trait)")
    return value


_FILE_SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def _phenotype_names(value: Any) -> list[str]:
    """Distinct column names, each usable in a result's file names (``gwas.<phenotype>.tsv.gz``)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and _FILE_SAFE.match(v) for v in value):
        raise ValueError("a non-empty list of phenotype columns, each of letters, digits, '_', '-' and '.'")
    if len(set(value)) != len(value):
        raise ValueError(f"distinct phenotype columns (repeated: {sorted({v for v in value if value.count(v) > 1})})")
    return list(value)


def _phenotypes(values: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(the first phenotype, every phenotype when there are several, else ``()``) from ``phenotype`` or ``phenotypes``.

    Several phenotypes share one census, one PCA and one model; what depends on a single
    phenotype (HWE among its controls) or would split a privacy budget is refused for them.
    """
    single, several = values["phenotype"], values["phenotypes"]
    if (single is None) == (several is None):
        raise ConfigurationError("gwas: the spec needs 'phenotype' (one column) or 'phenotypes' (a list), not both"
                                 if single is not None else "gwas: the spec needs 'phenotype' or 'phenotypes'")
    names = [single] if several is None else several
    for name in names:
        if name in values["covariates"]:
            raise ConfigurationError(f"gwas: the phenotype {name!r} is also listed as a covariate")
    if len(names) > 1 and values["hwe_samples"] == "controls":
        raise ConfigurationError("gwas: hwe_samples: controls tests HWE among one phenotype's controls; with several "
                                 "phenotypes use hwe_samples: all")
    if len(names) > 1 and values["privacy"] is not None:
        raise ConfigurationError("gwas: a privacy block covers one phenotype's releases; run one job per phenotype")
    return names[0], tuple(names) if len(names) > 1 else ()


def _references(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()):
        raise ValueError("a mapping of categorical covariate to its reference level (text), e.g. {centre: london}")
    return dict(value)


def _check_factors(values: Mapping[str, Any]) -> None:
    """Refuses at submission what the spec alone shows wrong about ``categorical``, ``reference`` and ``site_covariate``."""
    stray = [name for name in values["categorical"] if name not in values["covariates"]]
    if stray:
        raise ConfigurationError(f"gwas: categorical names {stray}, which are not among the covariates "
                                 f"{list(values['covariates'])}; list them under covariates too")
    stray = [name for name in values["reference"] if name not in values["categorical"]]
    if stray:
        raise ConfigurationError(f"gwas: reference names {stray}, which are not categorical covariates "
                                 f"{list(values['categorical'])}")
    if values["privacy"] is not None and (values["categorical"] or values["site_covariate"]):
        raise ConfigurationError("gwas: categorical covariates and site_covariate are exact only for now (their levels "
                                 "and per-site columns are not noised); drop the privacy block or those keys")


PARAMS = {
    "model": Param("linear", choice("linear", "logistic")),
    "covariates": Param([], names),
    "categorical": Param([], names),
    "reference": Param({}, _references),
    "min_level_count": Param(5, integer(1, 2**31 - 1)),
    "site_covariate": Param(False, boolean),
    "pcs": Param(0, integer(0, 50)),
    "pca": Param({}, mapping),
    "min_allele_count": Param(5, CENSUS_PARAMS["min_allele_count"].check),
    "min_call_rate": Param(0.95, CENSUS_PARAMS["min_call_rate"].check),
    "hwe_p": Param(1e-6, CENSUS_PARAMS["hwe_p"].check),
    "maf": Param(0.0, CENSUS_PARAMS["maf"].check),
    "min_sites_typed": Param(1, CENSUS_PARAMS["min_sites_typed"].check),
    "hwe_samples": Param("all", choice("all", "controls")),
    "hwe_within": Param("sites", choice("sites", "ancestry_clusters")),
    "hwe_clusters": Param(3, integer(1, 20)),
    "max_samples_per_site": Param(1_000_000, integer(1, 2**31 - 1)),
    "max_abs_value": Param(1e4, number(1.0, 1e6)),
    "max_abs_z": Param(100.0, number(2.0, 1e4)),
    "max_iterations": Param(25, integer(1, 1000)),
    "tolerance": Param(1e-8, number(1e-14, 1e-2)),
    "firth": Param(True, boolean),
    "dosages": Param("auto", choice("auto", "hard_calls")),
    "x_sex": Param(True, boolean),
    "assembly": Param("GRCh38", choice(*ASSEMBLIES)),
    "phenotype": Param(None, optional(_column_name)),
    "phenotypes": Param(None, optional(_phenotype_names)),
    "privacy": Param(None, CENSUS_PARAMS["privacy"].check),
    **SELECTION_PARAMS,
}
"""The GWAS spec keys, defaults and checks (``pca`` is handed to the PCA phase, which checks it)."""


@dataclass(frozen=True)
class GwasParameters:
    """A checked GWAS spec (see the package docstring's spec)."""

    model: str
    covariates: tuple[str, ...]
    pcs: int
    pca: dict[str, Any]
    min_allele_count: int
    min_call_rate: float
    hwe_p: float
    maf: float
    min_sites_typed: int
    max_samples_per_site: int
    max_abs_value: float
    max_abs_z: float
    max_iterations: int
    tolerance: float
    firth: bool
    phenotype: str
    privacy: PrivacyTerms | None = None
    hwe_samples: str = "all"
    hwe_within: str = "sites"
    hwe_clusters: int = 3
    dosages: str = "auto"
    phenotypes: tuple[str, ...] = ()
    """Every phenotype of a job with several (``phenotype`` is then the first); ``()`` for one."""
    categorical: tuple[str, ...] = ()
    """Covariates one-hot encoded at each site (:mod:`.covariates`)."""
    reference: dict[str, str] = field(default_factory=dict)
    """A categorical covariate's reference level, where not plink2's (the most common)."""
    min_level_count: int = 5
    """Fewest complete samples a site keeps with one level of a categorical covariate."""
    site_covariate: bool = False
    """Whether one indicator column per site (bar the reference) adjusts for the site."""
    x_sex: bool = True
    """plink2's default: chrX variants outside the PARs get sex as a covariate (``false``: its ``no-x-sex``)."""
    assembly: str = "GRCh38"
    """Whose chrX pseudo-autosomal regions are autosomal (plink2 ``--split-par b37``/``b38``)."""
    sex_required: bool = False
    """Set by the regression for its chrX part (:mod:`.chrx`), never by a spec: samples of unknown sex are not complete."""

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> GwasParameters:
        """Checks a GWAS spec and fills its defaults.

        Args:
            spec: the job spec without the runtime's keys.
            ignore: keys handed over by earlier phases, not checked here.

        Raises:
            ConfigurationError: naming the key, what was expected and what was given; a
                ``privacy`` block with a model or PCA phase that has no noisy mode yet;
                ``hwe_within: ancestry_clusters`` without PCs or with privacy terms.
        """
        values = parse_params(spec, PARAMS, where="gwas", ignore=ignore)
        for key in SELECTION_PARAMS:  # checked here; the Gwas analysis applies them to each site's dataset
            del values[key]
        values["phenotype"], values["phenotypes"] = _phenotypes(values)
        _check_factors(values)
        if values["hwe_samples"] == "controls" and values["model"] != "logistic":
            raise ConfigurationError("gwas: hwe_samples: controls needs a case/control phenotype (model: logistic); "
                                     "a quantitative trait has no controls, use hwe_samples: all")
        if values["hwe_within"] == "ancestry_clusters":
            if values["privacy"] is not None:
                raise ConfigurationError(
                    "gwas: hwe_within: ancestry_clusters needs each site's exact 0/1 Hardy-Weinberg flags, which a "
                    "differentially private job does not send (a flag would depend on single people; the private census "
                    "tests HWE on the pooled noisy counts); drop the privacy block or use hwe_within: sites"
                )
            if values["pcs"] < 1:
                raise ConfigurationError(
                    "gwas: hwe_within: ancestry_clusters clusters each site's samples by their PC scores, so it needs "
                    f"pcs >= 1 (got pcs: {values['pcs']}); set pcs (e.g. 4) or use hwe_within: sites"
                )
        if values["privacy"] is not None and (values["model"] != "linear" or values["pcs"] != 0):
            raise ConfigurationError(
                f"gwas with privacy supports model: linear with pcs: 0 for now (got model: {values['model']}, "
                f"pcs: {values['pcs']}): the logistic fit takes many rounds over the same people and the PCA phase has no "
                "noisy mode; drop the privacy block, or use model: linear and pcs: 0"
            )
        return cls(**{**values, "covariates": tuple(values["covariates"]), "categorical": tuple(values["categorical"])})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GwasParameters:
        privacy = data.get("privacy")
        return cls(**{**data, "covariates": tuple(data["covariates"]), "pca": dict(data["pca"]),
                      "privacy": None if privacy is None else PrivacyTerms.from_json(privacy),
                      "phenotypes": tuple(data.get("phenotypes", ())), "categorical": tuple(data.get("categorical", ())),
                      "reference": dict(data.get("reference", {}))})

    def to_json(self) -> dict[str, Any]:
        data = {**dataclasses.asdict(self), "covariates": list(self.covariates), "pca": dict(self.pca),
                "privacy": None if self.privacy is None else self.privacy.to_json(), "phenotypes": list(self.phenotypes)}
        data["categorical"] = list(self.categorical)
        for key, default in (("phenotypes", []), ("categorical", []), ("reference", {}), ("site_covariate", False),
                             ("min_level_count", 5), ("x_sex", True), ("assembly", "GRCh38"), ("sex_required", False)):
            if data[key] == default and (key != "min_level_count" or not self.categorical):
                del data[key]  # a job without them keeps its state and summary as they were
        return data

    def census_spec(self) -> dict[str, Any]:
        """The census phase's spec: its QC thresholds, the per-site sample bound, and with privacy its share of the budget.

        With ``hwe_within: ancestry_clusters`` the census runs with ``hwe_p: 0`` (no HWE
        filter, so no within-site flag): the regression phase's ancestry-cluster round
        applies the job's ``hwe_p`` instead, once the PC scores exist.
        """
        within_sites = self.hwe_within == "sites"
        spec: dict[str, Any] = {"min_allele_count": self.min_allele_count, "min_call_rate": self.min_call_rate,
                                "hwe_p": self.hwe_p if within_sites else 0.0, "maf": self.maf,
                                "max_samples_per_site": self.max_samples_per_site, "min_sites_typed": self.min_sites_typed,
                                "assembly": self.assembly}
        if self.hwe_samples == "controls" and within_sites:
            spec["hwe_controls"] = self.phenotype  # PLINK 1.9's --hwe on case/control data: the controls (0s)
        if self.privacy is not None:
            spec["privacy"] = census_terms(self.privacy).to_json()
        return spec

    @property
    def all_phenotypes(self) -> tuple[str, ...]:
        """The job's phenotypes: ``phenotypes``, or the one ``phenotype``."""
        return self.phenotypes or (self.phenotype,)

    def single(self, phenotype: str) -> GwasParameters:
        """These parameters for one of the phenotypes alone: what a one-phenotype job of it would hold."""
        return dataclasses.replace(self, phenotype=phenotype, phenotypes=())

    @property
    def columns(self) -> tuple[str, ...]:
        """The covariates of the fit, principal components last (``PC1``..)."""
        return (*self.covariates, *(f"PC{i + 1}" for i in range(self.pcs)))

    @property
    def integer_genotypes(self) -> bool:
        """Whether every value regressed on is a hard call (``dosages: hard_calls``), so allele sums are integers.

        With ``dosages: auto`` a site may regress on imputed dosages (:func:`pipeline.dataset.dosage_or_call`), and
        which sites have them is not public, so the allele sums are declared as fixed-point reals.
        """
        return self.dosages == "hard_calls"

    @property
    def statistic_bound(self) -> float:
        """Largest absolute value of one site's per-variant statistic: n_max * max_abs_z^2.

        Every factor of a product is a standardized value (at most ``max_abs_z``), 1, or a genotype: a hard call or a
        dosage, both at most 2 (dosages are clipped to [0, 2] at the site).
        """
        z = max(self.max_abs_z, 2.0)
        return self.max_samples_per_site * z * z

    @property
    def raw_moment_bound(self) -> float:
        """Largest absolute sum of one site's raw values or their squares: n_max * max_abs_value^2."""
        return self.max_samples_per_site * self.max_abs_value**2


def plan_regression_layout(declarations: Sequence[Declaration], num_sites: int, *, hint: str) -> Layout:
    """The layout of a regression round in Z_2^64.

    Raises:
        ConfigurationError: a field does not keep its fewest fractional bits for
            ``num_sites`` sites; says what to lower.
    """
    try:
        return plan_layout(declarations, num_sites, rings=(Ring.R64,), hint=hint)
    except ConfigurationError as error:
        raise ConfigurationError(f"gwas: {error}") from None
