"""Genotypes of a multi-ancestry population from one coalescent simulation.

All individuals of every site come from a single stdpopsim/msprime simulation under
the three-population Out-of-Africa model (YRI, CEU, CHB), so sites share a genealogy
the way real consortia share human history. Sites differ in their ancestry mix, which
makes the federation non-IID (allele frequencies and trait means differ by site).

Coordinates: a region ``contig:start-end`` is 1-based and inclusive (samtools style).
It is simulated as the tskit interval ``[start - 1, end)``; a tskit site at position
``x`` is the VCF record ``POS = x + 1`` and the FASTA base at 0-based offset ``x``.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import tskit

with warnings.catch_warnings():  # stdpopsim warns about its own dependencies on import
    warnings.simplefilter("ignore")
    import stdpopsim

from pipeline.errors import ConfigurationError
from pipeline.harmonize.contigs import canonical_contig

SPECIES = "HomSap"
DEMOGRAPHIC_MODEL = "OutOfAfrica_3G09"
ENGINE = "msprime"
POPULATIONS: tuple[str, ...] = ("YRI", "CEU", "CHB")

# Each site draws mostly from one population, with some of each of the others.
_ANCESTRY_MIXES: tuple[dict[str, float], ...] = (
    {"YRI": 0.10, "CEU": 0.80, "CHB": 0.10},
    {"YRI": 0.70, "CEU": 0.20, "CHB": 0.10},
    {"YRI": 0.10, "CEU": 0.15, "CHB": 0.75},
)

CHROMOSOMES: tuple[str, ...] = (*(str(i) for i in range(1, 23)), "X")
"""The chromosomes a region may lie on, in genome order (chrY and chrM are not simulated)."""

_REGION_PATTERN = re.compile(r"^(?P<contig>[A-Za-z0-9_.]+):(?P<start>[0-9,]+)-(?P<end>[0-9,]+)$")


@dataclass(frozen=True)
class GenomicInterval:
    """A 1-based, inclusive genomic interval, as written ``chr22:16000000-21000000``."""

    contig: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.contig}:{self.start}-{self.end}"

    @property
    def chromosome_number(self) -> str:
        """The contig name without a ``chr`` prefix (``chr22`` -> ``22``)."""
        return canonical_contig(self.contig, "nochr")

    @property
    def is_x(self) -> bool:
        """On chrX, where males are haploid outside the pseudo-autosomal regions."""
        return self.chromosome_number == "X"


def parse_region(text: str) -> GenomicInterval:
    """Parses ``contig:start-end`` (1-based, inclusive; commas allowed in numbers).

    Raises:
        ConfigurationError: the text is malformed, the interval is empty, or the contig
            is not a human autosome or chrX known to stdpopsim.
    """
    match = _REGION_PATTERN.match(text.strip())
    if match is None:
        raise ConfigurationError(
            f"region {text!r} is malformed: expected CONTIG:START-END, for example chr22:16000000-21000000"
        )
    contig = match["contig"]
    start = int(match["start"].replace(",", ""))
    end = int(match["end"].replace(",", ""))
    if start < 1 or end <= start:
        raise ConfigurationError(
            f"region {text!r} is empty or starts before 1: expected 1 <= START < END (1-based, inclusive)"
        )
    interval = GenomicInterval(contig, start, end)
    number = interval.chromosome_number
    if number not in CHROMOSOMES:
        raise ConfigurationError(
            f"region {text!r}: contig {contig!r} is not a simulated human chromosome; use chr1..chr22 or chrX (or 1..22, X)"
        )
    length = _chromosome_length(number)
    if end > length:
        raise ConfigurationError(
            f"region {text!r} ends after the end of {contig} ({length} bp in GRCh38); choose END <= {length}"
        )
    return interval


def _chromosome_length(number: str) -> int:
    species = _species()
    return int(species.genome.get_chromosome(f"chr{number}").length)


def _species():  # type: ignore[no-untyped-def]
    return stdpopsim.get_species(SPECIES)


def ancestry_mix(site_index: int) -> dict[str, float]:
    """The ancestry proportions of site ``site_index`` (0-based); cycles past three sites."""
    return dict(_ANCESTRY_MIXES[site_index % len(_ANCESTRY_MIXES)])


def split_counts(total: int, proportions: dict[str, float]) -> dict[str, int]:
    """Splits ``total`` individuals by ``proportions`` with the largest-remainder rule.

    The counts sum to ``total`` exactly, and the split is deterministic.
    """
    names = list(POPULATIONS)
    weight = np.array([proportions.get(name, 0.0) for name in names], dtype=np.float64)
    exact = weight / weight.sum() * total
    count = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - count), kind="stable")
    count[remainder_order[: total - int(count.sum())]] += 1
    return {name: int(c) for name, c in zip(names, count)}


@dataclass(frozen=True)
class SimulatedGenotypes:
    """The simulated tree sequence and how its haplotypes form diploid individuals.

    Attributes:
        tree_sequence: the tskit tree sequence (discrete genome, finite sites).
        individual_population: int (individuals,), index into :data:`POPULATIONS`.
        individual_haplotype: int (individuals, 2), the two columns of
            ``variant.genotypes`` that belong to each individual.
        mutation_rate, recombination_rate: per bp per generation, as simulated.
    """

    tree_sequence: tskit.TreeSequence
    individual_population: np.ndarray
    individual_haplotype: np.ndarray
    mutation_rate: float
    recombination_rate: float


def simulate_genotypes(interval: GenomicInterval, population_count: dict[str, int], *, seed: int) -> SimulatedGenotypes:
    """Simulates diploid individuals of each population over ``interval`` (no downloads).

    Uses the chromosome's mean recombination rate (uniform map) and the demographic
    model's mutation rate; msprime's discrete genome yields some multi-allelic sites.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        species = _species()
        model = species.get_demographic_model(DEMOGRAPHIC_MODEL)
        contig = species.get_contig(
            f"chr{interval.chromosome_number}",
            left=interval.start - 1,
            right=interval.end,
            mutation_rate=model.mutation_rate,
        )
        engine = stdpopsim.get_engine(ENGINE)
        samples = {name: count for name, count in population_count.items() if count > 0}
        tree_sequence = engine.simulate(model, contig, samples, seed=seed)

    sample_node = tree_sequence.samples()
    nodes = tree_sequence.tables.nodes
    node_individual = nodes.individual[sample_node]
    # Columns of variant.genotypes grouped by individual, in individual order.
    order = np.argsort(node_individual, kind="stable")
    individual_haplotype = order.reshape(-1, 2).astype(np.int64)
    model_population = [tree_sequence.population(i).metadata["name"] for i in range(tree_sequence.num_populations)]
    to_index = np.array([POPULATIONS.index(name) if name in POPULATIONS else -1 for name in model_population])
    individual_population = to_index[nodes.population[sample_node][order[::2]]]
    rates = contig.recombination_map.rate
    return SimulatedGenotypes(
        tree_sequence=tree_sequence,
        individual_population=individual_population.astype(np.int64),
        individual_haplotype=individual_haplotype,
        mutation_rate=float(model.mutation_rate),
        recombination_rate=float(np.nanmean(rates[np.isfinite(rates) & (rates > 0)])),
    )


def assign_individuals(
    individual_population: np.ndarray, site_population_count: list[dict[str, int]], rng: np.random.Generator
) -> list[np.ndarray]:
    """Deals the simulated individuals to sites, by population, in shuffled order.

    Returns one int array per site: the individuals of the site, in the (shuffled)
    order they appear as VCF sample columns.
    """
    pool = {
        p: list(rng.permutation(np.flatnonzero(individual_population == p))) for p in range(len(POPULATIONS))
    }
    site_individual = []
    for counts in site_population_count:
        members: list[int] = []
        for p, name in enumerate(POPULATIONS):
            take = counts.get(name, 0)
            members.extend(pool[p][:take])
            pool[p] = pool[p][take:]
        site_individual.append(rng.permutation(np.asarray(members, dtype=np.int64)))
    return site_individual
