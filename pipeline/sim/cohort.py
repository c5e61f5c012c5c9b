"""A realistic multi-site cohort on disk: genotypes, phenotypes, reference and truth.

One coalescent simulation (see :mod:`pipeline.sim.ancestry`) is dealt to sites with
different ancestry mixes; each site writes only the variants polymorphic among its own
samples, with its own quirks (:mod:`pipeline.sim.quirks`); traits have known causal
variants (:mod:`pipeline.sim.phenotypes`). The same arguments give byte-identical files.

Every causal variant lies in the trait region (``region``). Background regions
(``background_regions``, on other chromosomes) are simulated separately with the same
individuals, so they are unlinked to the trait region and carry no causal variant: their
variants are truly null, and the genomic inflation over them measures stratification
left after ancestry adjustment, not the spread of true signal through LD.

Layout of ``out`` (others rely on it)::

    cohort.json                       the manifest (:class:`CohortManifest`)
    reference.fa.gz (+ .fai, .gzi)    bgzipped FASTA, one contig per region, of length
                                      the region end, N before the region start
    truth.tsv                         causal variants and per-site quirk lists
    ancestry.tsv                      IID, site, population of every simulated person
    site-K/genotypes.vcf.gz (+ .tbi)  or site-K/genotypes.bcf (+ .csi)
    site-K/phenotypes.tsv             IID age sex quant_trait binary_trait
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.assembly import in_pseudoautosomal
from pipeline.errors import ConfigurationError, InputError
from pipeline.outputs import atomic_directory, check_output_path
from pipeline.sim import phenotypes as pheno
from pipeline.sim import writers
from pipeline.sim.ancestry import (
    CHROMOSOMES,
    DEMOGRAPHIC_MODEL,
    ENGINE,
    POPULATIONS,
    SPECIES,
    GenomicInterval,
    SimulatedGenotypes,
    ancestry_mix,
    assign_individuals,
    parse_region,
    simulate_genotypes,
    split_counts,
)
from pipeline.sim.quirks import SiteQuirks, add_missing_calls, contig_name, site_quirks, swap_ref_alt

DEFAULT_REGION = "chr22:16000000-21000000"
SIMULATED_ASSEMBLY = "GRCh38"  # stdpopsim's HomSap genome: chromosome lengths and chrX's PARs
MANIFEST_NAME = "cohort.json"
MANIFEST_FORMAT = "genofed-cohort/1"
MIN_SAMPLES = 10
CHUNK_VARIANTS = 2048
BGZF_LEVEL = 1
"""Deflate level of the simulated VCF.gz, BCF and FASTA: level 1 costs a quarter of the CPU of
bgzip's default 6 (the demo's first step writes 0.4 GB of VCF text) for 1.4-1.6x the bytes;
readers do not care."""
NA = "NA"


@dataclass(frozen=True)
class SiteManifest:
    """One site's files and quirks; paths are relative to the cohort folder."""

    name: str
    vcf: str
    index: str
    phenotypes: str
    file_format: str
    contig: str  # the trait region's contig as this site names it
    contig_style: str
    phased: bool
    quirks: dict[str, Any]
    counts: dict[str, int]
    ancestry_mix: dict[str, float]
    ancestry_counts: dict[str, int]
    genotype_only_samples: tuple[str, ...]
    phenotype_only_samples: tuple[str, ...]
    background_contigs: tuple[str, ...] = ()  # the background regions' contigs as this site names them

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as in ``cohort.json``."""
        out = dict(self.__dict__)
        for name in ("genotype_only_samples", "phenotype_only_samples", "background_contigs"):
            out[name] = list(out[name])
        return out


@dataclass(frozen=True)
class CohortManifest:
    """What ``cohort.json`` says about a simulated cohort.

    ``path`` is the cohort folder; every other path is relative to it (use
    :meth:`resolve`). ``region`` (with ``contig``, ``start``, ``end``) is the trait
    region, which holds every causal variant; ``background_regions`` are the null ones.
    """

    path: Path
    genofed_version: str
    seed: int
    region: str
    contig: str
    start: int
    end: int
    samples_per_site: int
    reference: str
    truth: str
    ancestry: str
    simulation: dict[str, Any]
    traits: dict[str, Any]
    sites: tuple[SiteManifest, ...] = field(default_factory=tuple)
    background_regions: tuple[str, ...] = ()

    def resolve(self, relative: str) -> Path:
        """The absolute path of a file named in the manifest."""
        return self.path / relative

    def site(self, name: str) -> SiteManifest:
        """The site called ``name`` (``site-1``...)."""
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(f"no site {name!r} in {self.path / MANIFEST_NAME}; sites: {[s.name for s in self.sites]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to ``cohort.json`` (without ``path``)."""
        out = {k: v for k, v in self.__dict__.items() if k not in {"path", "sites"}}
        out["background_regions"] = list(self.background_regions)
        out["format"] = MANIFEST_FORMAT
        out["sites"] = [site.to_dict() for site in self.sites]
        return out


def load_manifest(path: Path | str) -> CohortManifest:
    """Reads ``cohort.json`` from a cohort folder (or the file itself).

    Raises:
        InputError: the file is missing or is not a genofed cohort manifest.
    """
    path = Path(path)
    file = path if path.is_file() else path / MANIFEST_NAME
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError as error:
        raise InputError(f"{file}: no cohort manifest; create one with `genofed cohort simulate --out DIR`") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{file}: line {error.lineno}: not valid JSON ({error.msg})") from error
    if data.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{file}: expected a {MANIFEST_FORMAT} manifest, found format {data.get('format')!r}")
    site_data = data.pop("sites")
    data.pop("format")
    sites = tuple(
        SiteManifest(
            **{
                **s,
                "genotype_only_samples": tuple(s["genotype_only_samples"]),
                "phenotype_only_samples": tuple(s["phenotype_only_samples"]),
                "background_contigs": tuple(s.get("background_contigs", ())),
            }
        )
        for s in site_data
    )
    data["background_regions"] = tuple(data.get("background_regions", ()))
    return CohortManifest(path=file.parent, sites=sites, **data)


class _Progress:
    """Progress lines on stderr, with elapsed seconds, when switched on."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class _Census:
    """Per-variant facts gathered in a first pass over the simulation.

    Variants of every region, region by region (the trait region first).
    region: int64 (v,), index into the simulated regions. position: int64 (v,), VCF POS.
    alleles: v tuples, ancestral first. site_allele_count: int32 (v, sites, max_alleles).
    population_alt_count: int64 (v, populations), copies of allele 1.
    population_haplotypes: int64 (populations,).
    """

    region: np.ndarray
    position: np.ndarray
    alleles: list[tuple[str, ...]]
    site_allele_count: np.ndarray
    population_alt_count: np.ndarray
    population_haplotypes: np.ndarray


@dataclass(frozen=True)
class _SitePlan:
    """Which variants a site writes, which it swaps, and how alleles renumber."""

    keep: np.ndarray  # bool (v,)
    dropped: np.ndarray  # bool (v,)
    swapped: np.ndarray  # bool (v,)
    allele_map: np.ndarray  # int8 (v, max_alleles): simulated allele -> index in the site's record
    renumbered: np.ndarray  # bool (v,): allele_map is not the identity (an unobserved ALT was left out)
    ref: list[str]  # (v,) REF as written (meaningful where keep)
    alt: list[str]  # (v,) ALT as written, comma-joined


def simulate_cohort(
    out: Path | str,
    *,
    sites: int = 3,
    samples: int = 1000,
    region: str = DEFAULT_REGION,
    background_regions: Sequence[str] = (),
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
) -> CohortManifest:
    """Simulates a multi-site cohort into the folder ``out`` (written atomically).

    Args:
        out: the cohort folder to create.
        sites: number of sites (each ``site-K``).
        samples: VCF samples per site.
        region: the trait region ``contig:start-end``, 1-based inclusive, on a human
            autosome; every causal variant lies in it.
        background_regions: null regions, each on another autosome, simulated for the
            same individuals and written after the trait region in every file.
        seed: every random choice derives from it; the same arguments give
            byte-identical files.
        force: replace ``out`` if it exists.
        progress: print progress lines on stderr.

    Returns:
        The manifest written to ``out/cohort.json``.

    Raises:
        ConfigurationError: bad sizes or region.
        OutputExistsError: ``out`` exists and ``force`` is false.
    """
    interval = parse_region(region)
    if interval.is_x:
        raise ConfigurationError(f"the trait region {interval} must lie on an autosome; chrX may be a background region")
    intervals = [interval, *_background_intervals(interval, background_regions)]
    if sites < 1:
        raise ConfigurationError(f"--sites must be at least 1, got {sites}")
    if samples < MIN_SAMPLES:
        raise ConfigurationError(f"--samples must be at least {MIN_SAMPLES} per site, got {samples}")
    if seed < 0:
        raise ConfigurationError(f"--seed must be a non-negative integer, got {seed}")
    check_output_path(Path(out), force=force)  # fail before the simulation, not after it
    say = _Progress(progress)
    stream = np.random.SeedSequence(seed).spawn(5 + sites)
    # One msprime seed per region; the first is the trait region's whatever follows it.
    msprime_seeds = [int(state) % (2**31 - 2) + 1 for state in stream[0].generate_state(len(intervals))]
    assign_rng, causal_rng, phenotype_rng, reference_rng = (np.random.default_rng(s) for s in stream[1:5])
    site_rngs = [np.random.default_rng(s) for s in stream[5:]]
    quirks = [site_quirks(i) for i in range(sites)]
    names = [f"site-{i + 1}" for i in range(sites)]

    mixes = [ancestry_mix(i) for i in range(sites)]
    site_population_count = [split_counts(samples, mix) for mix in mixes]
    totals = {p: sum(c[p] for c in site_population_count) for p in POPULATIONS}
    simulations = []
    for where, msprime_seed in zip(intervals, msprime_seeds):
        say(f"simulating {sum(totals.values())} diploid individuals over {where} ({SPECIES}/{DEMOGRAPHIC_MODEL})")
        simulations.append(simulate_genotypes(where, totals, seed=msprime_seed))
    simulation = simulations[0]
    # stdpopsim numbers individuals population by population, so every region has the same people.
    assert all(np.array_equal(other.individual_population, simulation.individual_population) for other in simulations)
    site_individual = assign_individuals(simulation.individual_population, site_population_count, assign_rng)
    layouts = [_layout(each, site_individual) for each in simulations]

    say(f"surveying {sum(each.tree_sequence.num_sites for each in simulations)} variant sites")
    census = _survey(simulations, layouts)
    quant_index, binary_index = _choose_causal(census, interval, causal_rng)
    causal = np.zeros(len(census.position), dtype=bool)
    causal[quant_index] = True
    causal[binary_index] = True
    plans = [_plan_site(census, s, quirks[s], causal, site_rngs[s]) for s in range(sites)]

    with atomic_directory(out, force=force) as folder:
        say("writing reference.fa.gz")
        _write_reference(folder / "reference.fa.gz", intervals, census, reference_rng)
        say("drawing phenotypes")
        site_records, effects = _write_phenotypes(
            folder, simulations, census, site_individual, quant_index, binary_index, quirks, names, phenotype_rng,
            site_rngs,
        )
        site_manifests = []
        say("writing genotypes: " + ", ".join(f"{names[s]} {int(plans[s].keep.sum())} variants" for s in range(sites)))
        vcf_paths = _write_genotypes(
            folder, simulations, census, intervals, layouts, plans, quirks, names, site_records, site_rngs, say
        )
        for s in range(sites):
            site_manifests.append(
                _site_manifest(
                    names[s], quirks[s], intervals, vcf_paths[s], plans[s], census, s, mixes[s],
                    site_population_count[s], site_records[s], samples,
                )
            )
        _write_truth(folder / "truth.tsv", intervals, census, quant_index, binary_index, effects, plans, names)
        manifest = CohortManifest(
            path=Path(out),
            genofed_version=__version__,
            seed=seed,
            region=str(interval),
            contig=interval.contig,
            start=interval.start,
            end=interval.end,
            samples_per_site=samples,
            reference="reference.fa.gz",
            truth="truth.tsv",
            ancestry="ancestry.tsv",
            simulation={
                "species": SPECIES,
                "demographic_model": DEMOGRAPHIC_MODEL,
                "engine": ENGINE,
                "populations": list(POPULATIONS),
                "mutation_rate": simulation.mutation_rate,
                "recombination_rate": simulation.recombination_rate,
                "msprime_seed": msprime_seeds[0],
                "background_msprime_seeds": msprime_seeds[1:],
                "variant_sites": int(len(census.position)),
                "coordinates": "tskit position x is VCF POS x + 1 and FASTA offset x",
            },
            traits={
                **pheno.trait_model(),
                "causal_variants_chosen": {"quant_trait": len(quant_index), "binary_trait": len(binary_index)},
            },
            sites=tuple(site_manifests),
            background_regions=tuple(str(each) for each in intervals[1:]),
        )
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")
    say(f"done: {out}")
    return manifest


def _background_intervals(trait: GenomicInterval, regions: Sequence[str]) -> list[GenomicInterval]:
    """Parses the background regions, in chromosome order; each on a chromosome of its own.

    Raises:
        ConfigurationError: a region is malformed, or two regions share a chromosome (they
            would be simulated as unlinked although they are not).
    """
    intervals = sorted((parse_region(text) for text in regions), key=lambda each: CHROMOSOMES.index(each.chromosome_number))
    seen = {trait.chromosome_number: str(trait)}
    for each in intervals:
        if each.chromosome_number in seen:
            raise ConfigurationError(
                f"background region {each} is on the same chromosome as {seen[each.chromosome_number]}; "
                "each region is simulated as an unlinked chromosome, so give each one on another autosome"
            )
        seen[each.chromosome_number] = str(each)
    return intervals


@dataclass(frozen=True)
class _Layout:
    """The order in which haplotypes are decoded: site by site, each in VCF sample order.

    Site ``s`` owns the contiguous columns ``site_offset[s]:site_offset[s + 1]``;
    its sample ``j`` has columns ``2j`` and ``2j + 1`` of that slice.
    """

    sample_node: np.ndarray  # int32 (haplotypes,), tskit sample node per column
    site_offset: np.ndarray  # int64 (sites + 1,)
    column_population: np.ndarray  # int64 (haplotypes,)


def _layout(simulation: SimulatedGenotypes, site_individual: list[np.ndarray]) -> _Layout:
    sample_node = simulation.tree_sequence.samples()
    individual = np.concatenate(site_individual)
    column = simulation.individual_haplotype[individual].reshape(-1)
    sizes = [0] + [2 * members.size for members in site_individual]
    return _Layout(
        sample_node=sample_node[column].astype(np.int32),
        site_offset=np.cumsum(sizes).astype(np.int64),
        column_population=np.repeat(simulation.individual_population[individual], 2),
    )


def _genotype_chunks(
    simulations: Sequence[SimulatedGenotypes], layouts: Sequence[_Layout]
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yields ``(first_variant, region, int8 (chunk, haplotypes))`` over every region's variant sites in order.

    A chunk never spans two regions. The buffer is reused: consumers must finish with a
    chunk before asking for the next.
    """
    first = 0
    for region, (simulation, layout) in enumerate(zip(simulations, layouts)):
        buffer = np.empty((CHUNK_VARIANTS, layout.sample_node.size), dtype=np.int8)
        filled = 0
        for variant in simulation.tree_sequence.variants(samples=layout.sample_node, copy=False):
            buffer[filled] = variant.genotypes
            filled += 1
            if filled == CHUNK_VARIANTS:
                yield first, region, buffer
                first += filled
                filled = 0
        if filled:
            yield first, region, buffer[:filled]
            first += filled


def _survey(simulations: Sequence[SimulatedGenotypes], layouts: Sequence[_Layout]) -> _Census:
    """First pass: alleles, per-site allele counts and per-population ALT counts, over every region."""
    # tskit's allele order: the ancestral state, then derived states in mutation order.
    alleles = [tuple(variant.alleles) for each in simulations for variant in each.tree_sequence.variants(copy=False)]
    region = np.concatenate(
        [np.full(each.tree_sequence.num_sites, r, dtype=np.int64) for r, each in enumerate(simulations)]
    )
    n_allele = np.array([len(a) for a in alleles], dtype=np.int64)
    max_alleles = max(2, int(n_allele.max(initial=2)))
    if max_alleles > 9:
        raise ConfigurationError(f"a simulated site has {max_alleles} alleles; at most 9 fit in a VCF GT digit")
    layout = layouts[0]  # every region deals the same individuals to the same sites and populations
    n_site = layout.site_offset.size - 1
    n_population = len(POPULATIONS)
    haplotypes = layout.sample_node.size
    # Column membership: one indicator column per site, then one per population.
    column_site = np.repeat(np.arange(n_site), np.diff(layout.site_offset))
    membership = np.zeros((haplotypes, n_site + n_population), dtype=np.float32)
    membership[np.arange(haplotypes), column_site] = 1.0
    membership[np.arange(haplotypes), n_site + layout.column_population] = 1.0
    group_size = membership.sum(axis=0).astype(np.int64)

    count = np.zeros((len(alleles), n_site + n_population, max_alleles), dtype=np.int32)
    for first, _, genotype in _genotype_chunks(simulations, layouts):
        stop = first + genotype.shape[0]
        # Biallelic rows: the sum of allele indexes is the ALT count (exact in float32).
        count[first:stop, :, 1] = np.rint(genotype.astype(np.float32) @ membership).astype(np.int32)
        multi = np.flatnonzero(n_allele[first:stop] > 2)
        for k in range(1, max_alleles):
            if multi.size:
                carries = (genotype[multi] == k).astype(np.float32)
                count[first + multi, :, k] = np.rint(carries @ membership).astype(np.int32)
    count[:, :, 0] = group_size - count[:, :, 1:].sum(axis=2)
    position = np.concatenate([each.tree_sequence.tables.sites.position.astype(np.int64) + 1 for each in simulations])
    return _Census(
        region=region,
        position=position,
        alleles=alleles,
        site_allele_count=count[:, :n_site, :],
        population_alt_count=count[:, n_site:, 1].astype(np.int64),
        population_haplotypes=group_size[n_site:],
    )


def _choose_causal(
    census: _Census, interval: GenomicInterval, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Common biallelic variants of the trait region, polymorphic at every site, spaced along it."""
    biallelic = np.array([len(a) == 2 for a in census.alleles], dtype=bool) & (census.region == 0)
    polymorphic_everywhere = np.all((census.site_allele_count[:, :, :2] > 0).all(axis=2), axis=1)
    present = census.population_haplotypes > 0
    population_frequency = census.population_alt_count[:, present] / census.population_haplotypes[present]
    pooled = census.population_alt_count.sum(axis=1) / census.population_haplotypes.sum()
    pooled_maf = np.minimum(pooled, 1 - pooled)
    strict = (
        biallelic
        & polymorphic_everywhere
        & (pooled_maf >= 0.10)
        & np.all((population_frequency >= 0.05) & (population_frequency <= 0.95), axis=1)
    )
    relaxed = biallelic & polymorphic_everywhere & (pooled_maf >= 0.05)
    wanted = pheno.QUANT_CAUSAL + pheno.BINARY_CAUSAL
    spacing = max(1, min(100_000, (interval.end - interval.start) // (4 * wanted)))
    chosen = pheno.choose_spaced(np.flatnonzero(strict), census.position, wanted, min_spacing=spacing, rng=rng)
    if chosen.size < wanted:
        chosen = pheno.choose_spaced(np.flatnonzero(relaxed), census.position, wanted, min_spacing=spacing, rng=rng)
    if chosen.size < 2:
        raise ConfigurationError(
            f"region {interval} has too few common variants for causal effects ({chosen.size}); "
            "use a longer region (at least 100 kb) or more samples"
        )
    order = rng.permutation(chosen.size)
    n_binary = max(1, round(chosen.size * pheno.BINARY_CAUSAL / wanted))
    binary = np.sort(chosen[order[:n_binary]])
    quant = np.sort(chosen[order[n_binary:]])
    return quant, binary


def _plan_site(
    census: _Census, s: int, quirks: SiteQuirks, causal: np.ndarray, rng: np.random.Generator
) -> _SitePlan:
    count = census.site_allele_count[:, s, :]
    observed = count > 0
    polymorphic = observed.sum(axis=1) >= 2
    dropped = polymorphic & ~causal & (rng.random(len(census.position)) < quirks.drop_fraction)
    keep = polymorphic & ~dropped
    biallelic_snp = np.array(
        [len(a) == 2 and len(a[0]) == 1 and len(a[1]) == 1 for a in census.alleles], dtype=bool
    ) & observed[:, :2].all(axis=1)
    swapped = keep & biallelic_snp & (rng.random(len(census.position)) < quirks.ref_alt_swap_fraction)
    written = observed.copy()
    written[:, 0] = True  # REF is the ancestral allele even where no sample carries it
    allele_map = np.where(written, np.cumsum(written, axis=1) - 1, -1).astype(np.int8)
    n_allele = np.array([len(a) for a in census.alleles])
    in_range = np.arange(allele_map.shape[1])[None, :] < n_allele[:, None]
    renumbered = np.any(in_range & (allele_map != np.arange(allele_map.shape[1])[None, :]), axis=1)
    ref: list[str] = []
    alt: list[str] = []
    for i, alleles in enumerate(census.alleles):
        derived = [allele for k, allele in enumerate(alleles) if k > 0 and observed[i, k]]
        if swapped[i]:
            ref.append(derived[0])
            alt.append(alleles[0])
        else:
            ref.append(alleles[0])
            alt.append(",".join(derived))
    return _SitePlan(
        keep=keep, dropped=dropped, swapped=swapped, allele_map=allele_map, renumbered=renumbered, ref=ref, alt=alt
    )


def _write_reference(
    path: Path, intervals: Sequence[GenomicInterval], census: _Census, rng: np.random.Generator
) -> None:
    """FASTA with one contig per region, up to the region end: N, then random bases, ancestral at variants."""
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    contigs = []
    for r, interval in enumerate(intervals):
        sequence = np.full(interval.end, ord("N"), dtype=np.uint8)
        sequence[interval.start - 1 :] = bases[rng.integers(0, 4, size=interval.end - interval.start + 1)]
        in_region = np.flatnonzero(census.region == r)
        ancestral = np.array([ord(census.alleles[i][0][0]) for i in in_region], dtype=np.uint8)
        sequence[census.position[in_region] - 1] = ancestral
        contigs.append((interval.contig, sequence))
    writers.write_fasta(path, contigs, level=BGZF_LEVEL)


@dataclass(frozen=True)
class _SiteSamples:
    """A site's sample IDs: VCF columns, phenotype rows, and the mismatches between them."""

    vcf_sample_id: list[str]
    phenotype_sample_id: list[str]
    genotype_only: tuple[str, ...]
    phenotype_only: tuple[str, ...]
    phenotype_na: int
    vcf_male: np.ndarray  # bool (VCF samples,): male (sex 1), so haploid on chrX outside the PARs


def _write_phenotypes(
    folder: Path,
    simulations: Sequence[SimulatedGenotypes],
    census: _Census,
    site_individual: list[np.ndarray],
    quant_index: np.ndarray,
    binary_index: np.ndarray,
    quirks: list[SiteQuirks],
    names: list[str],
    rng: np.random.Generator,
    site_rngs: list[np.random.Generator],
) -> tuple[list[_SiteSamples], dict[str, np.ndarray]]:
    """Draws traits for everyone and writes each site's shuffled, imperfect phenotype table.

    Returns the site sample records and the causal effects per trait.
    """
    simulation = simulations[0]  # the trait region, where every causal variant lies
    n_individual = simulation.individual_population.shape[0]
    causal = np.concatenate([quant_index, binary_index])
    dosage = _causal_dosage(simulation, census.position[causal] - 1)
    pooled = census.population_alt_count[causal].sum(axis=1) / census.population_haplotypes.sum()
    # People with phenotypes but no genotypes: ancestry from the site mix, genotypes from pooled frequencies.
    extra_population = []
    extra_site = []
    for s, q in enumerate(quirks):
        mix = ancestry_mix(s)
        weight = np.array([mix[p] for p in POPULATIONS])
        extra_population.append(site_rngs[s].choice(len(POPULATIONS), size=q.phenotype_only_samples, p=weight))
        extra_site.extend([s] * q.phenotype_only_samples)
    extra_pop = np.concatenate(extra_population).astype(np.int64)
    extra_dosage = rng.binomial(2, pooled, size=(extra_pop.size, causal.size)).astype(np.int8)
    all_dosage = np.concatenate([dosage, extra_dosage])
    population = np.concatenate([simulation.individual_population, extra_pop])
    quant_effect = pheno.effect_sizes(pooled[: quant_index.size], pheno.QUANT_VARIANCE_PER_VARIANT, rng)
    binary_effect = pheno.effect_sizes(pooled[quant_index.size :], pheno.BINARY_VARIANCE_PER_VARIANT, rng)
    traits = pheno.simulate_traits(
        population=population,
        quant_dosage=all_dosage[:, : quant_index.size],
        quant_effect=quant_effect,
        binary_dosage=all_dosage[:, quant_index.size :],
        binary_effect=binary_effect,
        rng=rng,
    )

    records = []
    ancestry_lines = ["IID\tsite\tpopulation\tin_vcf"]
    extra_offset = n_individual
    for s, (individual, q) in enumerate(zip(site_individual, quirks)):
        site_rng = site_rngs[s]
        n = individual.size
        number = site_rng.permutation(n + q.phenotype_only_samples)
        vcf_id = [f"S{s + 1}_{k:06d}" for k in number[:n]]
        extra_id = [f"S{s + 1}_{k:06d}" for k in number[n:]]
        extra_row = np.arange(extra_offset, extra_offset + q.phenotype_only_samples)
        extra_offset += q.phenotype_only_samples
        genotype_only = np.sort(site_rng.choice(n, size=min(q.genotype_only_samples, n - 1), replace=False))
        with_phenotype = np.setdiff1d(np.arange(n), genotype_only)
        rows = np.concatenate([individual[with_phenotype], extra_row])
        ids = [vcf_id[j] for j in with_phenotype] + extra_id
        order = site_rng.permutation(len(ids))
        site_folder = folder / names[s]
        site_folder.mkdir()
        n_na = pheno.write_phenotype_table(
            site_folder / "phenotypes.tsv",
            [ids[k] for k in order],
            traits,
            rows[order],
            na_rate=q.phenotype_na_rate,
            rng=site_rng,
        )
        for j, iid in enumerate(vcf_id):
            ancestry_lines.append(f"{iid}\t{names[s]}\t{POPULATIONS[population[individual[j]]]}\ttrue")
        for k, iid in enumerate(extra_id):
            ancestry_lines.append(f"{iid}\t{names[s]}\t{POPULATIONS[population[extra_row[k]]]}\tfalse")
        records.append(
            _SiteSamples(
                vcf_sample_id=vcf_id,
                phenotype_sample_id=[ids[k] for k in order],
                genotype_only=tuple(vcf_id[j] for j in genotype_only),
                phenotype_only=tuple(extra_id),
                phenotype_na=n_na,
                vcf_male=traits.sex[individual] == 1,
            )
        )
    (folder / "ancestry.tsv").write_text("\n".join(ancestry_lines) + "\n")
    return records, {"quant_trait": quant_effect, "binary_trait": binary_effect}


def _causal_dosage(simulation: SimulatedGenotypes, tskit_position: np.ndarray) -> np.ndarray:
    """int8 (individuals, causal): copies of allele 1 at the given tskit positions."""
    ts = simulation.tree_sequence
    dosage = np.zeros((simulation.individual_haplotype.shape[0], tskit_position.size), dtype=np.int8)
    for k, x in enumerate(tskit_position):
        for variant in ts.variants(left=int(x), right=int(x) + 1):
            carries = (variant.genotypes == 1).astype(np.int8)
            dosage[:, k] = carries[simulation.individual_haplotype].sum(axis=1)
    return dosage


def _write_genotypes(
    folder: Path,
    simulations: Sequence[SimulatedGenotypes],
    census: _Census,
    intervals: Sequence[GenomicInterval],
    layouts: Sequence[_Layout],
    plans: list[_SitePlan],
    quirks: list[SiteQuirks],
    names: list[str],
    site_records: list[_SiteSamples],
    site_rngs: list[np.random.Generator],
    say: _Progress,
) -> list[tuple[str, str]]:
    """Second pass over the simulation: every site's records, then BCF conversion and indexes."""
    contigs = [[contig_name(each.chromosome_number, q.contig_style) for each in intervals] for q in quirks]
    # BCF sites go through an uncompressed VCF intermediate, removed after conversion.
    text_paths = [
        folder / name / ("genotypes.vcf" if q.file_format == "bcf" else "genotypes.vcf.gz")
        for name, q in zip(names, quirks)
    ]
    handles = []
    for s, path in enumerate(text_paths):
        handle = writers.open_vcf_output(path, level=BGZF_LEVEL)
        source = f"stdpopsim {SPECIES}/{DEMOGRAPHIC_MODEL} via {ENGINE}"
        handle.write(
            writers.vcf_header(
                [(contig, each.end) for contig, each in zip(contigs[s], intervals)],
                site_records[s].vcf_sample_id,
                source=source,
            ).encode()
        )
        handles.append(handle)
    try:
        for first, region, genotype in _genotype_chunks(simulations, layouts):
            layout = layouts[region]
            stop = first + genotype.shape[0]
            for s, plan in enumerate(plans):
                row = np.flatnonzero(plan.keep[first:stop])
                if row.size == 0:
                    continue
                variant = first + row
                allele = genotype[row, layout.site_offset[s] : layout.site_offset[s + 1]]
                renumber = np.flatnonzero(plan.renumbered[variant])
                if renumber.size:
                    allele[renumber] = np.take_along_axis(
                        plan.allele_map[variant[renumber]], allele[renumber].astype(np.intp), axis=1
                    )
                allele = allele.reshape(row.size, -1, 2)
                swapped = plan.swapped[variant]
                if swapped.any():
                    allele[swapped] = swap_ref_alt(allele[swapped])
                allele = add_missing_calls(
                    allele,
                    missing_rate=quirks[s].missing_rate,
                    half_missing_rate=quirks[s].half_missing_rate,
                    rng=site_rngs[s],
                )
                if intervals[region].is_x:  # males keep their first copy outside the PARs
                    haploid = ~in_pseudoautosomal(census.position[variant], SIMULATED_ASSEMBLY)
                    allele[haploid[:, None] & site_records[s].vcf_male[None, :], 1] = writers.ABSENT
                cells = writers.encode_genotype_rows(allele, phased=quirks[s].phased)
                handles[s].write(
                    writers.vcf_lines(
                        contigs[s][region],
                        census.position[variant],
                        [plan.ref[i] for i in variant],
                        [plan.alt[i] for i in variant],
                        cells,
                    )
                )
    finally:
        for handle in handles:
            handle.close()
    paths = []
    for s, path in enumerate(text_paths):
        if quirks[s].file_format == "bcf":
            say(f"{names[s]}: converting to BCF and indexing")
            bcf = path.with_name("genotypes.bcf")
            index = writers.convert_to_bcf(path, bcf, level=BGZF_LEVEL)
            path.unlink()
            paths.append((f"{names[s]}/{bcf.name}", f"{names[s]}/{index.name}"))
        else:
            say(f"{names[s]}: indexing")
            index = writers.index_vcf_gz(path)
            paths.append((f"{names[s]}/{path.name}", f"{names[s]}/{index.name}"))
    return paths


def _site_manifest(
    name: str,
    quirks: SiteQuirks,
    intervals: Sequence[GenomicInterval],
    paths: tuple[str, str],
    plan: _SitePlan,
    census: _Census,
    s: int,
    mix: dict[str, float],
    population_count: dict[str, int],
    samples_record: _SiteSamples,
    samples: int,
) -> SiteManifest:
    polymorphic = (census.site_allele_count > 0).sum(axis=2) >= 2  # (v, sites)
    private = plan.keep & polymorphic[:, s] & (polymorphic.sum(axis=1) == 1)
    n_alt = np.array([alt.count(",") + 1 for alt in plan.alt])
    return SiteManifest(
        name=name,
        vcf=paths[0],
        index=paths[1],
        phenotypes=f"{name}/phenotypes.tsv",
        file_format=quirks.file_format,
        contig=contig_name(intervals[0].chromosome_number, quirks.contig_style),
        contig_style=quirks.contig_style,
        phased=quirks.phased,
        quirks=quirks.to_dict(),
        counts={
            "vcf_samples": samples,
            "phenotype_rows": len(samples_record.phenotype_sample_id),
            "phenotype_na_values": samples_record.phenotype_na,
            "variants": int(plan.keep.sum()),
            "multiallelic": int((plan.keep & (n_alt > 1)).sum()),
            "ref_alt_swapped": int(plan.swapped.sum()),
            "dropped": int(plan.dropped.sum()),
            "private": int(private.sum()),
        },
        ancestry_mix=mix,
        ancestry_counts=population_count,
        genotype_only_samples=samples_record.genotype_only,
        phenotype_only_samples=samples_record.phenotype_only,
        background_contigs=tuple(contig_name(each.chromosome_number, quirks.contig_style) for each in intervals[1:]),
    )


TRUTH_COLUMNS = ("chromosome", "base_pair_location", "ref", "alt", "effect", "trait", "kind", "site")


def _write_truth(
    path: Path,
    intervals: Sequence[GenomicInterval],
    census: _Census,
    quant_index: np.ndarray,
    binary_index: np.ndarray,
    effects: dict[str, np.ndarray],
    plans: list[_SitePlan],
    names: list[str],
) -> None:
    """truth.tsv: causal variants (kind=causal), then per-site swaps and drops.

    REF/ALT are always in the reference orientation (REF = ancestral = FASTA base).
    """
    lines = ["\t".join(TRUTH_COLUMNS)]
    for trait, index in (("quant_trait", quant_index), ("binary_trait", binary_index)):
        for i, effect in zip(index, effects[trait]):
            ref, alt = census.alleles[i]
            contig = intervals[census.region[i]].contig
            lines.append(f"{contig}\t{census.position[i]}\t{ref}\t{alt}\t{effect:.6f}\t{trait}\tcausal\t{NA}")
    for plan, name in zip(plans, names):
        for kind, mask in (("ref_alt_swap", plan.swapped), ("dropped", plan.dropped)):
            for i in np.flatnonzero(mask):
                ref = census.alleles[i][0]
                alt = plan.ref[i] if plan.swapped[i] else plan.alt[i]
                contig = intervals[census.region[i]].contig
                lines.append(f"{contig}\t{census.position[i]}\t{ref}\t{alt}\t{NA}\t{NA}\t{kind}\t{name}")
    path.write_text("\n".join(lines) + "\n")
