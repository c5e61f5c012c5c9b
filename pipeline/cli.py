"""The ``genofed`` command: a thin click layer over library functions.

Each command parses its options and calls one library function with keyword
arguments. Only this module configures logging. A :class:`GenofedError` becomes one
line on stderr and exit code 1 (``-v`` shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pipeline import __version__
from pipeline.assembly import ASSEMBLIES
from pipeline.errors import GenofedError

log = logging.getLogger("pipeline")


def _configure_logging(verbose: int, log_format: str = "text") -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if log_format == "json":
        from pipeline.logs import JsonLinesFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLinesFormatter())
        logging.captureWarnings(True)  # a library's warning is a record too, not a stray text line
        _EVENTS.setLevel(logging.INFO)  # start and stop lines are always written, as their text form is


_EVENTS = logging.getLogger("pipeline.cli")
"""The start and stop lines of long-running commands, as log records under ``--log-format json``."""


def log_format_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--log-format text|json``: how a long-running command writes its log on stderr."""
    return click.option(
        "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, envvar="GENOFED_LOG_FORMAT",
        help="Log lines on stderr as text, or as JSON lines (one object per line: time, level, logger, message, event "
             "and its fields) for a log shipper [env GENOFED_LOG_FORMAT].",
    )(func)


def verbose_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeatable): more logging, and tracebacks on errors."""
    return click.option("-v", "--verbose", count=True, help="More logging (-vv for debug); show tracebacks on errors.")(func)


def progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--progress/--no-progress``: progress bars, on by default only on a terminal."""
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show progress bars (default: only when stderr is a terminal).",
    )(func)


def force_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--force``: replace an existing output."""
    return click.option("--force", is_flag=True, help="Replace the output if it already exists.")(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: print a machine-readable summary on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")(func)


def resolve_progress(progress: bool | None) -> bool:
    """Progress bars default to on only when stderr is an interactive terminal."""
    return sys.stderr.isatty() if progress is None else progress


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a command body, turning library errors into one line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, verbose: int = 0, **kwargs: Any) -> Any:
        _configure_logging(verbose, kwargs.get("log_format", "text"))
        try:
            return func(*args, **kwargs)
        except GenofedError as error:
            structured = kwargs.get("log_format") == "json"  # the error line is a record of the JSON log too
            if structured:
                log.error("genofed: error: %s", error, exc_info=bool(verbose), extra={"event": "command.failed"})
            elif verbose:
                log.exception("failed")
            if kwargs.get("as_json"):
                # Scripts that asked for JSON get JSON on stdout, failure included.
                click.echo(json.dumps({"status": "error", "error": str(error), "error_type": type(error).__name__}, sort_keys=True))
            if not structured:
                click.echo(f"genofed: error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("genofed: interrupted; no output was written", err=True)
            sys.exit(130)

    return verbose_option(wrapper)


def echo_summary(summary: dict[str, Any], *, as_json: bool, text: str) -> None:
    """Prints either the JSON summary or the human text."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))
    else:
        click.echo(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="genofed")
def main() -> None:
    """genofed: federated genomics where the coordinator only ever learns sums.

    A site harmonizes its VCF/BCF files into the shared Arrow contract
    (`genofed ingest`), checks them (`genofed qc`), and joins federated analyses
    whose contributions are combined by secure aggregation.
    """


@main.group()
def cohort() -> None:
    """Realistic simulated multi-site cohorts (for the demo, tests and benchmarks)."""


@main.command("qc")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=None,
    help="Output folder for variants.parquet, samples.parquet and qc-summary.json "
    "[default: DATASET.qc beside the dataset; the dataset itself is never modified].",
)
@click.option(
    "--min-call-rate", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True,
    help="Variants with a lower call rate fail (as plink2 --geno 0.05).",
)
@click.option(
    "--min-sample-call-rate", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True,
    help="Samples with a lower call rate fail (as plink2 --mind 0.05).",
)
@click.option(
    "--hwe-p", type=click.FloatRange(0.0, 1.0), default=1e-6, show_default=True,
    help="Variants with a lower Hardy-Weinberg exact-test p-value fail (as plink2 --hwe); 0 disables.",
)
@click.option(
    "--maf", type=click.FloatRange(0.0, 0.5), default=0.0, show_default=True,
    help="Variants with a lower minor allele frequency fail (as plink2 --maf); 0 disables.",
)
@force_option
@progress_option
@json_option
@handles_errors
def qc_command(
    dataset: Path, out: Path | None, min_call_rate: float, min_sample_call_rate: float,
    hwe_p: float, maf: float, force: bool, progress: bool | None, as_json: bool,
) -> None:
    """Per-variant and per-sample QC of a harmonized DATASET (the site's own view).

    Per variant: genotype counts, call rate, allele count/number, ALT frequency and
    the Hardy-Weinberg exact-test p-value (Wigginton et al. 2005, AJHG 76:887; the P
    of plink2 --hardy). Per sample: call rate, het count and heterozygosity.
    Thresholds mark rows pass_qc (nothing is removed). Reads one chunk at a time.

    \b
    Example:
      genofed qc site-1.dataset --out site-1.qc --min-call-rate 0.98 --hwe-p 1e-10
    """
    from pipeline.qc import run_qc, summary_text

    summary = run_qc(
        dataset, out=out, min_call_rate=min_call_rate, min_sample_call_rate=min_sample_call_rate,
        hwe_p=hwe_p, maf=maf, force=force, progress=resolve_progress(progress),
    )
    echo_summary(summary, as_json=as_json, text=summary_text(summary))


@main.group("dataset")
def dataset_group() -> None:
    """Maintain harmonized datasets written by `genofed ingest`."""


@dataset_group.command("upgrade")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@progress_option
@json_option
@handles_errors
def dataset_upgrade_command(dataset: Path, progress: bool | None, as_json: bool) -> None:
    """Convert DATASET, written by an older genofed, to the current format in place.

    Only the genotype files change, one chunk at a time: format 1 stored lists, format
    2 one byte a call (still read as it is), format 3 packs each variant's calls 2
    bits each into one value, a quarter of the bytes to compress and read. An
    interrupted run is finished by running it again; a dataset already in the current
    format is left as it is.

    \b
    Example:
      genofed dataset upgrade site-1.dataset
    """
    from tqdm import tqdm

    from pipeline.dataset_upgrade import upgrade_dataset

    with tqdm(unit="chunk", desc="upgrade", disable=not resolve_progress(progress)) as bar:
        def advance(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        done = upgrade_dataset(dataset, progress=advance)
    summary = {"status": "ok", "dataset": str(dataset), "converted": done.converted,
               "already_packed": done.already_packed, "format_version": done.format_version}
    text = (f"{dataset}: format {done.format_version}; {done.converted} chunk(s) converted, "
            f"{done.already_packed} already in this format")
    echo_summary(summary, as_json=as_json, text=text)


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--scheduler`` and the dask-jobqueue worker-job options, for every Dask-backed command."""
    options = [
        click.option(
            "--scheduler", default="processes", show_default=True,
            help="Where Dask-backed work runs: processes, threads, synchronous (this machine: processes use several "
            "cores, where threads share Python's lock in the VCF decoding); tcp://HOST:PORT "
            "(a running dask.distributed scheduler); slurm or pbs (Dask workers as batch jobs, via dask-jobqueue).",
        ),
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Workers of a local scheduler [default: one per core this process may use, a batch job's allocation]."),
        click.option("--queue", default=None, help="slurm/pbs: partition or queue of the worker jobs [default: Dask config jobqueue.*.queue]."),
        click.option("--cores", type=click.IntRange(min=1), default=None, help="slurm/pbs: cores per worker job [default: Dask config]."),
        click.option("--memory", default=None, help="slurm/pbs: memory per worker job, e.g. 8GB [default: Dask config]."),
        click.option("--walltime", default=None, help="slurm/pbs: walltime per worker job, e.g. 02:00:00 [default: Dask config]."),
        click.option("--account", default=None, help="slurm/pbs: account to charge [default: Dask config]."),
        click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="slurm/pbs: worker jobs to start."),
        click.option(
            "--performance-report", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Write Dask's performance report (HTML) here; needs a distributed scheduler (tcp://, slurm, pbs).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _cluster(queue: str | None, cores: int | None, memory: str | None, walltime: str | None, account: str | None, jobs: int) -> Any:
    from pipeline.cluster import ClusterOptions

    return ClusterOptions(queue=queue, cores=cores, memory=memory, walltime=walltime, account=account, jobs=jobs)


class _ChunkSize(click.ParamType):
    """``--chunk-size``: 5Mb, 500kb or a number of bases."""

    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from pipeline.errors import ConfigurationError
        from pipeline.ingest import parse_chunk_size

        try:
            return parse_chunk_size(value)
        except ConfigurationError as error:
            self.fail(str(error), param, ctx)


def _missing_code(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number; give a number such as -9, or 'none'", ctx=ctx, param=param) from None


@main.command("ingest")
@click.option("--vcf", multiple=True,
              help="VCF, bgzipped VCF or BCF (with a .tbi/.csi index the work is split by region). Repeat it for several files, "
                   "or write {chrom} in the path for the files that exist for chromosomes 1..22, X, Y, MT.")
@click.option("--vcf-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A text file naming the input VCF/BCF files, one a line ('#' lines and blank lines skipped; relative paths "
                   "are relative to the list file). Instead of --vcf.")
@click.option("--pfile", multiple=True, metavar="PREFIX",
              help="A PLINK 2 fileset PREFIX.pgen/.pvar/.psam (or .pvar.zst, plink2 vzs) instead of VCF input; repeatable, {chrom} allowed.")
@click.option("--bfile", multiple=True, metavar="PREFIX",
              help="A PLINK 1 fileset PREFIX.bed/.bim/.fam instead of VCF input; A2 is read as REF (give --fasta to check it and "
                   "fix swaps). Repeatable, {chrom} allowed.")
@click.option("--bgen", multiple=True,
              help="A BGEN file (v1.2; first allele REF) instead of VCF input; dosages from the probabilities, hard calls as "
                   "plink2 derives them (within 0.1 of an integer). Repeatable, {chrom} allowed.")
@click.option("--sample", "sample_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The Oxford .sample file of --bgen input (needed when the .bgen holds no sample IDs).")
@click.option("--fasta", default=None, help="Reference FASTA: REF is checked, swapped REF/ALT and strand flips fixed.")
@click.option("--phenotypes", default=None, help="Phenotype TSV (first column IID) matched to the VCF samples.")
@click.option("--missing-code", default="-9", show_default=True, callback=_missing_code,
              help="The number that means missing in the phenotype table, besides NA, NaN, '.' and empty cells (PLINK's -9, "
                   "as plink2 --input-missing-phenotype); 'none' keeps every number a value.")
@click.option("--out", required=True, help="Dataset folder to create.")
@click.option("--chunk-size", type=_ChunkSize(), default="5Mb", show_default=True, help="Bases per chunk / Dask task (5Mb, 500kb, 1000000).")
@cluster_options
@click.option("--contig-style", type=click.Choice(["chr", "nochr", "keep"]), default="chr", show_default=True, help="Contig names: chr22, 22, or as in the file.")
@click.option("--assembly", type=click.Choice(list(ASSEMBLIES)), default=None,
              help="Genome assembly of the positions, recorded in the dataset (default: what the VCF header's ##reference or "
                   "##contig assembly= names, else not recorded); a federated GWAS publishes it.")
@click.option("--min-info", type=click.FloatRange(min=0), default=None,
              help="Drop imputed variants whose imputation quality (INFO/R2 of minimac, DR2 of Beagle or INFO of IMPUTE, the "
                   "first the header declares) is below this, as plink2 --extract-if-info does; variants without a score "
                   "(typed) are kept. Dosages come from FORMAT/DS, or from GP where a record has no DS.")
@force_option
@progress_option
@json_option
@handles_errors
def ingest_command(
    vcf: tuple[str, ...], vcf_list: Path | None, pfile: tuple[str, ...], bfile: tuple[str, ...], bgen: tuple[str, ...],
    sample_file: Path | None, fasta: str | None, phenotypes: str | None, out: str, chunk_size: int, scheduler: str,
    workers: int | None,
    queue: str | None, cores: int | None, memory: str | None, walltime: str | None, account: str | None, jobs: int,
    performance_report: Path | None, contig_style: str, assembly: str | None, min_info: float | None,
    missing_code: float | None, force: bool,
    progress: bool | None, as_json: bool,
) -> None:
    """Harmonize a site's VCF/BCF files into a genofed dataset (Parquet, schemas/).

    One file, or several that make one dataset (one file per chromosome, say), given
    in one of three ways: --vcf repeated (in that order), --vcf-list FILE, or a
    pattern --vcf 'site.chr{chrom}.vcf.gz' (the files that exist for 1..22, X, Y, MT,
    in that order; the report lists them). Several inputs must have the same samples
    in the same order (as 'bcftools concat' requires), and a contig may come from one
    input file only. Regions of all indexed inputs are one Dask graph.

    PLINK 2 (--pfile), PLINK 1 (--bfile) and BGEN (--bgen) inputs are read in one
    pass and harmonized exactly as VCF records are. One kind of input per ingest:
    --vcf, --vcf-list, --pfile, --bfile and --bgen exclude each other.

    \b
    Example (one Dask task per 5 Mb region, workers as Slurm jobs):
      genofed ingest --vcf site.bcf --fasta ref.fa.gz --out site.dataset --scheduler slurm --cores 4 --memory 8GB --jobs 4

    \b
    Example (one file per chromosome):
      genofed ingest --vcf 'site.chr{chrom}.vcf.gz' --fasta ref.fa.gz --out site.dataset
    """
    from pipeline.cluster import dask_session
    from pipeline.ingest import ingest, summary_text
    from pipeline.ingest_inputs import read_vcf_list

    given = {"--vcf": vcf, "--vcf-list": (vcf_list,) if vcf_list is not None else (), "--pfile": pfile, "--bfile": bfile, "--bgen": bgen}
    named = [option for option, values in given.items() if values]
    if len(named) != 1:
        got = f" (got {' and '.join(named)})" if named else ""
        raise click.UsageError(f"give the input with one of --vcf (repeatable), --vcf-list, --pfile, --bfile or --bgen; one kind of input per ingest{got}")
    if sample_file is not None and named != ["--bgen"]:
        raise click.UsageError("--sample goes with --bgen input only")
    input_format = {"--pfile": "pfile", "--bfile": "bfile", "--bgen": "bgen"}.get(named[0], "vcf")
    inputs = read_vcf_list(vcf_list) if vcf_list is not None else list(given[named[0]])  # type: ignore[arg-type]
    with dask_session(scheduler, options=_cluster(queue, cores, memory, walltime, account, jobs), performance_report=performance_report):
        report = ingest(
            inputs, out=out, fasta=fasta, phenotypes=phenotypes, chunk_size=chunk_size, scheduler=scheduler,
            workers=workers, contig_style=contig_style, assembly=assembly, min_info=min_info, missing_code=missing_code,
            force=force,
            progress=resolve_progress(progress), input_format=input_format, sample=sample_file,
        )
    echo_summary(report, as_json=as_json, text=summary_text(report, out))


def _region_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from pipeline.sim.ancestry import parse_region

    try:
        return str(parse_region(value))
    except GenofedError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from error


def _background_regions_argument(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    if value == ("none",):
        return ()
    return tuple(_region_argument(ctx, param, each) for each in value)


def background_regions_option(default: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--background-region``: the simulator's null regions (repeatable; ``none`` for none)."""
    return click.option(
        "--background-region", "background_regions", multiple=True, default=default, show_default=True,
        callback=_background_regions_argument,
        help="A null region CONTIG:START-END on another autosome or on chrX, simulated for the same people: unlinked "
             "to the trait region and without causal variants, so lambda_GC over it measures stratification the PCs "
             "left. On chrX males are haploid outside the GRCh38 pseudo-autosomal regions (e.g. chrX:2000000-4000000 "
             "spans the end of PAR1). Repeat for more; 'none' for none.",
    )


@cohort.command("simulate")
@click.option("--out", "out", required=True, type=click.Path(), help="Cohort folder to create (one sub-folder per site).")
@click.option("--sites", type=click.IntRange(min=1), default=3, show_default=True, help="Number of sites.")
@click.option("--samples", type=click.IntRange(min=10), default=1000, show_default=True, help="VCF samples per site.")
@click.option(
    "--region",
    default="chr22:16000000-21000000",
    show_default=True,
    callback=_region_argument,
    help="The trait region CONTIG:START-END (1-based, inclusive) on a human autosome; every causal variant lies in it.",
)
@background_regions_option(("chr21:15000000-25000000",))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same bytes.")
@force_option
@json_option
@progress_option
@handles_errors
def cohort_simulate(
    out: str, sites: int, samples: int, region: str, background_regions: tuple[str, ...], seed: int, force: bool,
    as_json: bool, progress: bool | None,
) -> None:
    """Simulate a multi-site cohort: per-site VCF/BCF, phenotypes, reference FASTA, truth.

    Genotypes come from stdpopsim (HomSap, OutOfAfrica_3G09; one simulation per region,
    the same people in each) dealt to sites with different ancestry mixes; each site has its own file quirks (contig
    names, VCF vs BCF, phasing, missing calls, REF/ALT swaps, variant subsets), recorded
    in DIR/cohort.json. Traits have their causal variants in the trait region
    (--region); background regions are null, unlinked chromosomes (--background-region).
    """
    from pipeline.sim.cohort import simulate_cohort

    manifest = simulate_cohort(
        out, sites=sites, samples=samples, region=region, background_regions=background_regions, seed=seed,
        force=force, progress=resolve_progress(progress),
    )
    summary = manifest.to_dict()
    summary["path"] = str(manifest.path)
    background = "".join(f", null background {each}" for each in manifest.background_regions)
    lines = [f"cohort {manifest.path}: {len(manifest.sites)} sites, trait region {manifest.region}{background}, seed {manifest.seed}"]
    for site in manifest.sites:
        lines.append(
            f"  {site.name}: {site.vcf} ({site.counts['variants']} variants x {site.counts['vcf_samples']} samples, "
            f"contig {site.contig}, {'phased' if site.phased else 'unphased'}), {site.phenotypes}"
        )
    echo_summary(summary, as_json=as_json, text="\n".join(lines))


@main.group("provision", invoke_without_command=True, subcommand_metavar="[COMMAND [ARGS]...]")
@click.option("--federation", help="Federation name (the O= of every certificate).  [required]")
@click.option("--site", "sites", multiple=True, help="A site's name; repeat for each site.  [required]")
@click.option("--analyst", "analysts", multiple=True, help="An analyst's name; repeat for each [default: analyst].")
@click.option("--operator", "operators", multiple=True, help="An operator's name (reads every job's status and results, installs rosters, submits none); repeat for each [default: none].")
@click.option("--out", type=click.Path(path_type=Path), help="Folder to create.  [required]")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address (IP or DNS name) sites and analysts use to reach the coordinator.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True, help="The coordinator's TCP port.")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True, help="Validity of the certificates, in days.")
@click.option(
    "--allow", "allowed", multiple=True,
    help="An analysis every site's policy allows initially; repeat [default: census, secure_sum].",
)
@click.option(
    "--share-variant-keys", is_flag=True,
    help="Let every site reveal which variants it has (IDs, never counts), as the census needs; each site can change it.",
)
@click.option(
    "--share-site-metrics", is_flag=True,
    help="Let every site send its own held-out model metrics (not only the federation's); each site can change it.",
)
@force_option
@json_option
@click.pass_context
@handles_errors
def provision_command(
    ctx: click.Context, federation: str | None, sites: tuple[str, ...], analysts: tuple[str, ...], operators: tuple[str, ...],
    out: Path | None, host: str, port: int, days: int, allowed: tuple[str, ...], share_variant_keys: bool,
    share_site_metrics: bool, force: bool, as_json: bool,
) -> None:
    """Create a federation: CA, certificates, keys and a configuration per participant.

    Writes OUT/coordinator/, OUT/sites/NAME/, OUT/analysts/NAME/ (and OUT/operators/NAME/),
    each a folder to hand to that participant (certificate, 0600 private key, CA certificate, the
    federation roster signed by the CA, config).
    OUT/ca/ca.key, the CA's private key, is needed only to issue certificates: it
    stays with the consortium operator and is never copied to any participant.

    The commands below change a provisioned federation with its existing CA: each
    signs the next roster version; push-roster hands it to the running coordinator.

    \b
    Example:
      genofed provision --federation demo --site site-1 --site site-2 --analyst alice --operator ops --out demo-federation
      genofed provision revoke site-2 --dir demo-federation
      genofed provision push-roster --config demo-federation/operators/ops/operator.toml demo-federation/roster.json
    """
    if ctx.invoked_subcommand is not None:
        if federation or sites or out or analysts or operators:
            raise click.UsageError(f"options that create a federation do not go with {ctx.invoked_subcommand}")
        return
    for value, option in ((federation, "--federation"), (sites, "--site"), (out, "--out")):
        if not value:
            raise click.UsageError(f"Missing option '{option}'.", ctx=ctx)
    assert federation is not None and out is not None
    from pipeline.federation.provision import DEFAULT_ANALYSES, provision

    manifest = provision(
        out, federation=federation, sites=sites, analysts=analysts or ("analyst",), operators=operators, coordinator_host=host,
        coordinator_port=port, valid_days=days, allowed_analyses=allowed or DEFAULT_ANALYSES,
        share_variant_keys=share_variant_keys, share_site_metrics=share_site_metrics, force=force,
    )
    lines = [f"federation {manifest.federation}: {manifest.path} (coordinator {manifest.coordinator_url})"]
    for participant in manifest.participants:
        lines.append(f"  {participant.role:<11} {participant.name:<16} {participant.config}")
    lines.append(f"roster {manifest.roster} (version 1, signed by the CA; a copy is in every participant folder)")
    lines.append(f"keep {manifest.ca_key} with the consortium operator: it can issue any participant's certificate")
    echo_summary(manifest.to_dict(), as_json=as_json, text="\n".join(lines))


def federation_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--dir OUT``: the federation folder ``genofed provision --out`` wrote (with the CA key)."""
    return click.option(
        "--dir", "federation_dir", required=True, metavar="OUT", envvar="GENOFED_FEDERATION_DIR",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="The federation folder genofed provision --out wrote (it holds ca/ca.key) [env GENOFED_FEDERATION_DIR].",
    )(func)


def _echo_roster_change(change: Any, *, as_json: bool) -> None:
    """The summary of add-participant, renew and revoke, with what the operator does next."""
    lines = [f"{change.action} {change.role} {change.name} {'to' if change.action == 'added' else 'in'} federation {change.federation}: roster version "
             f"{change.version} (was {change.previous_version}), signed by the existing CA: {change.roster}"]
    if change.participant is not None:
        lines.append(f"  folder {change.participant.folder} (certificate {change.participant.fingerprint[:16]}..., "
                     f"valid until {change.participant.not_after:%Y-%m-%d}): hand it to {change.name}")
    enrolment = {"added": "enrols", "renewed": "pins the new certificate of", "revoked": "no longer enrols"}[change.action]
    lines.append(f"  roster copied into {len(change.copies)} participant folders"
                 + (f"; {change.coordinator_config} {enrolment} {change.name}" if change.role != "coordinator" else ""))
    push = f"genofed provision push-roster --config OPERATOR.toml {change.roster}"
    if change.role == "coordinator":
        lines.append(f"next: install the coordinator's folder {change.participant.folder} and restart it")
    else:
        effect = {"added": f"the coordinator lets {change.name} in from then on",
                  "renewed": "the coordinator refuses the old certificate from then on",
                  "revoked": f"the coordinator refuses {change.name} from then on"}[change.action]
        lines.append(f"next: {push} ({effect}; sites take the roster up at their next poll), and install "
                     f"{change.coordinator_config} there for its next restart")
    echo_summary(change.to_dict(), as_json=as_json, text="\n".join(lines))


def _new_participant_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options of add-participant and add-site: certificate validity and a new site's initial policy."""
    for option in reversed((
        click.option("--days", type=click.IntRange(min=1), default=None,
                     help="Validity of its certificate, in days [default: 365, at most until the CA expires]."),
        click.option("--allow", "allowed", multiple=True,
                     help="A site: an analysis its policy allows; repeat [default: census, secure_sum]."),
        click.option("--share-variant-keys", is_flag=True,
                     help="A site: let it reveal which variants it has (IDs, never counts)."),
        click.option("--share-site-metrics", is_flag=True, help="A site: let it send its own held-out model metrics."),
        force_option,
        json_option,
    )):
        func = option(func)
    return func


@provision_command.command("add-participant")
@click.argument("name")
@federation_dir_option
@click.option("--role", type=click.Choice(["site", "analyst", "operator"]), default="site", show_default=True,
              help="The new participant's role.")
@_new_participant_options
@handles_errors
def provision_add_participant(
    name: str, federation_dir: Path, role: str, days: int | None, allowed: tuple[str, ...], share_variant_keys: bool,
    share_site_metrics: bool, force: bool, as_json: bool,
) -> None:
    """Add a site, analyst or operator NAME with the federation's existing CA.

    Writes its folder as genofed provision does, signs roster version N+1 that lists it
    (copied into every participant folder) and enrols it in the coordinator's
    coordinator.toml. --force replaces an existing folder of that name.

    \b
    Example:
      genofed provision add-participant alice2 --role analyst --dir demo-federation
    """
    from pipeline.federation.provision import DEFAULT_ANALYSES, add_participant

    change = add_participant(federation_dir, name, role=role, valid_days=days, allowed_analyses=allowed or DEFAULT_ANALYSES,
                             share_variant_keys=share_variant_keys, share_site_metrics=share_site_metrics, force=force)
    _echo_roster_change(change, as_json=as_json)


@provision_command.command("add-site")
@click.argument("name")
@federation_dir_option
@_new_participant_options
@click.pass_context
def provision_add_site(ctx: click.Context, **options: Any) -> None:
    """Add site NAME with the federation's existing CA (add-participant --role site).

    \b
    Example:
      genofed provision add-site site-4 --dir demo-federation --share-variant-keys
    """
    ctx.invoke(provision_add_participant, role="site", **options)


@provision_command.command("renew")
@click.argument("name")
@federation_dir_option
@click.option("--role", type=click.Choice(["coordinator", "site", "analyst", "operator"]), default=None,
              help="Its role, where the name alone is ambiguous.")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Validity of the new certificate, in days [default: 365, at most until the CA expires].")
@json_option
@handles_errors
def provision_renew(name: str, federation_dir: Path, role: str | None, days: int | None, as_json: bool) -> None:
    """Issue NAME a new certificate and key; roster version N+1 lists only the new one.

    The new cert.pem and key.pem replace the old ones in its folder; once the
    coordinator has the new roster (push-roster), the old certificate is refused.

    \b
    Example:
      genofed provision renew site-1 --dir demo-federation --days 365
    """
    from pipeline.federation.provision import renew

    _echo_roster_change(renew(federation_dir, name, role=role, valid_days=days), as_json=as_json)


@provision_command.command("revoke")
@click.argument("name")
@federation_dir_option
@click.option("--role", type=click.Choice(["site", "analyst", "operator"]), default=None,
              help="Its role, where the name alone is ambiguous.")
@json_option
@handles_errors
def provision_revoke(name: str, federation_dir: Path, role: str | None, as_json: bool) -> None:
    """Remove NAME from the federation: roster version N+1 no longer lists it.

    Once the coordinator has the new roster (push-roster) it refuses NAME's
    certificate, and sites refuse rounds and keys of a revoked site.

    \b
    Example:
      genofed provision revoke site-2 --dir demo-federation
    """
    from pipeline.federation.provision import revoke

    _echo_roster_change(revoke(federation_dir, name, role=role), as_json=as_json)


@provision_command.command("push-roster")
@click.argument("roster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An operator's operator.toml.")
@json_option
@handles_errors
def provision_push_roster(roster: Path, config_path: Path, as_json: bool) -> None:
    """Install ROSTER at the running coordinator, as an operator (no restart).

    The coordinator takes it only if the federation CA signed it and it is newer than
    the roster it uses; from then on it refuses every certificate ROSTER does not
    list, and sites take it up (after verifying it themselves) at their next poll.

    \b
    Example:
      genofed provision push-roster --config demo-federation/operators/ops/operator.toml demo-federation/roster.json
    """
    from pipeline.federation.provision import push_roster

    answer = push_roster(config_path, roster)
    verb = "installed" if answer.get("status") == "installed" else "already uses"
    echo_summary(answer, as_json=as_json, text=f"coordinator {answer['coordinator']} {verb} roster version {answer['version']} "
                                               f"of federation {answer['federation']} ({answer.get('participants')} participants)")


@main.group()
def audit() -> None:
    """Hash-chained audit logs of contributions, rounds and results."""


@audit.command("verify")
@click.argument("log_path", metavar="LOG", type=click.Path(path_type=Path))
@click.option("--head", "expected_head", default=None, help="An entry hash recorded elsewhere; the log must end with it.")
@click.option(
    "--checkpoints", "kept_in", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The other party's audit log (a site's, for the coordinator's LOG; the coordinator's, for a site's LOG): "
         "LOG must agree with every head its owner signed that was kept there. Repeat for several.",
)
@click.option("--signer", default=None, help="Whose LOG it is, when the --checkpoints logs keep heads of several (the coordinator's log keeps every site's).")
@click.option("--roster", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The federation roster the signatures are checked against [default: roster.json beside LOG].")
@click.option("--ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The federation CA certificate that signed the roster [default: ca.pem beside LOG].")
@json_option
@handles_errors
def audit_verify(log_path: Path, expected_head: str | None, kept_in: tuple[Path, ...], signer: str | None,
                 roster: Path | None, ca: Path | None, as_json: bool) -> None:
    """Check an audit LOG: every entry's hash, the chain, and the head file LOG.head (not needed with --head).

    With --checkpoints, also check LOG against the heads its owner signed when jobs
    ended, as the other party kept them: this detects a log that was cut short, or
    rewritten and re-chained with its head file, which the chain alone cannot.

    Exits 0 when intact; exits 1 naming the first bad line when an entry was edited,
    inserted, deleted or moved, when the end of the log was cut off, or when the log
    disagrees with a signed head.

    \b
    Example (at the coordinator, with a site's log):
      genofed audit verify coordinator/audit.log --checkpoints site-1-audit.log
    """
    from pipeline.errors import AuditError, ConfigurationError
    from pipeline.federation.audit import verify

    if kept_in:
        from pipeline.federation.checkpoints import verify_with_checkpoints
        from pipeline.federation.roster import load_roster

        roster_path, ca_path = roster or log_path.parent / "roster.json", ca or log_path.parent / "ca.pem"
        for path, option in ((roster_path, "--roster"), (ca_path, "--ca")):
            if not path.is_file():
                raise ConfigurationError(f"{path}: no such file; give the federation's with {option}")
        report = verify_with_checkpoints(log_path, kept_in, load_roster(roster_path, ca_path), signer=signer,
                                         expected_head=expected_head)
    else:
        report = verify(log_path, expected_head=expected_head)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        if not report.ok:
            sys.exit(1)
    elif not report.ok:
        raise AuditError(report.text())
    else:
        click.echo(report.text())


@main.command("demo")
@click.option("--out", type=click.Path(), default="genofed-demo", show_default=True, help="Folder for everything the demo writes.")
@click.option("--sites", type=click.IntRange(min=2), default=3, show_default=True, help="Number of simulated sites.")
@click.option("--samples", type=click.IntRange(min=50), default=1000, show_default=True, help="Samples per site.")
@click.option("--region", default="chr22:16000000-18000000", show_default=True, callback=_region_argument,
              help="The simulated trait region CONTIG:START-END, which holds every causal variant.")
@background_regions_option(("chr21:16000000-18000000",))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the simulation (same seed, same files).")
@force_option
@progress_option
@json_option
@handles_errors
def demo_command(out: str, sites: int, samples: int, region: str, background_regions: tuple[str, ...], seed: int,
                 force: bool, progress: bool | None, as_json: bool) -> None:
    """Run a whole federation on this machine: simulate, ingest, QC, federate.

    Simulates a cohort of SITES sites with realistic file quirks (chr22 vs 22,
    VCF.gz vs BCF, swapped alleles, multi-allelic records...), ingests each site
    against the shared reference, runs each site's QC and the federated analyses,
    and prints a short report. Takes about a minute on 2 cores.
    """
    from pipeline.demo import run_demo

    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    summary = run_demo(out, sites=sites, samples=samples, region=region, background_regions=background_regions, seed=seed,
                       force=force, progress=resolve_progress(progress), say=say)
    echo_summary(summary, as_json=as_json, text=f"demo finished in {summary['seconds']} s; everything is in {summary['out']}")


@main.group()
def coordinator() -> None:
    """The federation's coordinator (HTTPS server with mutual TLS)."""


@coordinator.command("serve")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="coordinator.toml (written by genofed provision).")
@click.option("--host", default=None, help="Address to bind [default: from the config].")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port to bind [default: from the config].")
@json_option
@log_format_option
@handles_errors
def coordinator_serve(config_path: Path, host: str | None, port: int | None, as_json: bool, log_format: str) -> None:
    """Serve the coordinator until interrupted; running jobs resume after a restart.

    Logs job events (submitted, done, failed, cancelled, pruned) and each site's first
    contact at INFO on stderr; --log-format json writes them, and the start and stop
    lines, as JSON lines.
    """
    import signal

    from pipeline.federation.api import serve
    from pipeline.federation.config import load_coordinator_config
    from pipeline.federation.tls import certificate_validity

    config = load_coordinator_config(config_path)
    url = f"https://{host or config.host}:{port or config.port}"
    expires = certificate_validity(config.cert)[1]
    logging.getLogger("pipeline.federation").setLevel(min(logging.INFO, logging.getLogger().level))
    _echo_event("coordinator.started", as_json=as_json, log_format=log_format, federation=config.federation, url=url,
                database=str(config.database), audit_log=str(config.audit_log), sites=len(config.sites),
                analysts=len(config.analysts), certificate_expires=expires.isoformat())
    _warn_expiry("coordinator", config.cert, expires, as_json=as_json, log_format=log_format)
    stopped = "error"

    def terminated(*_: Any) -> None:  # uvicorn shuts down gracefully, then re-raises SIGTERM here
        nonlocal stopped
        stopped = "terminated"
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminated)
    try:
        serve(config_path, host=host, port=port, configure_logging=log_format == "text")
        stopped = "interrupted"
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    finally:
        _echo_event("coordinator.stopped", as_json=as_json, log_format=log_format, federation=config.federation, url=url,
                    reason=stopped)


def _echo_event(event: str, *, as_json: bool, log_format: str = "text", level: int = logging.INFO, **fields: Any) -> None:
    """A start or stop line of a long-running command: one JSON line on stdout, or one text line on stderr.

    Under ``--log-format json`` it is also a log record on stderr (the log's own start and stop lines).
    """
    if log_format == "json":
        from pipeline.logs import event_extra

        _EVENTS.log(level, "genofed: %s", event.replace(".", " "), extra=event_extra(event, fields))
    if as_json:
        click.echo(json.dumps({"event": event, **fields}, sort_keys=True, default=str))
    elif log_format != "json":
        click.echo(f"genofed: {event.replace('.', ' ')}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in fields.items()),
                   err=True)


def _warn_expiry(who: str, cert: Path, expires: Any, *, as_json: bool, log_format: str = "text", days: int = 30) -> None:
    """A warning line when ``cert`` expires within ``days`` days (or has expired)."""
    import datetime as dt

    left = expires - dt.datetime.now(dt.timezone.utc)
    if left < dt.timedelta(days=days):
        when = "has expired" if left.total_seconds() <= 0 else f"expires in {left.days} day{'' if left.days == 1 else 's'}"
        _echo_event("certificate.expiring", as_json=as_json, log_format=log_format, level=logging.WARNING, who=who, certificate=str(cert), expires=expires.isoformat(),
                    warning=f"the {who}'s certificate {when}; ask the federation operator for a new one")


def _client_config_option(envvar: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The --config option of a command that calls the coordinator as an analyst or operator (``what``: the file)."""
    return click.option(
        "--config", "config_path", required=True, envvar=envvar, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=f"{what} [env {envvar}].",
    )


_operator_config_option = _client_config_option("GENOFED_OPERATOR_CONFIG", "operator.toml (written by genofed provision --operator NAME)")


def _age_argument(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from pipeline.federation.config import parse_duration

    try:
        return parse_duration(value, what="age")
    except GenofedError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from error


@coordinator.command("status")
@_operator_config_option
@json_option
@handles_errors
def coordinator_status(config_path: Path, as_json: bool) -> None:
    """Show the running federation: each site's last contact and whether it polls now, jobs, store size, audit log head.

    Asks the running coordinator (GET /v1/federation) as an operator: last contact is
    known only to its process. An analyst's or a site's certificate is refused (HTTP 403).
    """
    from pipeline.federation.operator import federation_status, status_text

    status = federation_status(config_path)
    echo_summary(status, as_json=as_json, text=status_text(status))


@coordinator.command("prune")
@_operator_config_option
@click.option("--older-than", "older_than", required=True, metavar="AGE", callback=_age_argument,
              help="Prune jobs that ended (done, failed or cancelled) more than AGE ago: 30d, 12h, 90m, 45s, 2w, or 0 for all.")
@click.option("--dry-run", is_flag=True, help="List the jobs that would be pruned and their bytes; change nothing.")
@json_option
@handles_errors
def coordinator_prune(config_path: Path, older_than: float, dry_run: bool, as_json: bool) -> None:
    """Apply a retention policy: remove ended jobs' contributions, rounds and results from the coordinator's store.

    Runs inside the running coordinator (POST /v1/federation/prune, as an operator), so
    its in-memory rounds, its store and its audit log change together and no second
    process writes the database; a stopped coordinator prunes nothing (start it first).
    A running job is never pruned. Each pruned job keeps its record (analysis, owner,
    outcome, finished and pruned times, the digest of what was removed) and gets a
    job.pruned audit entry; 'genofed job status' then says when it was pruned. Body files
    no other job uses are deleted and the database is vacuumed: the bytes freed are
    measured and printed.

    \b
    Example:
      genofed coordinator prune --config operators/olga/operator.toml --older-than 30d --dry-run
    """
    from pipeline.federation.operator import prune_jobs, prune_text

    summary = prune_jobs(config_path, older_than=older_than, dry_run=dry_run)
    echo_summary(summary, as_json=as_json, text=prune_text(summary))


@main.group()
def site() -> None:
    """A site's agent: polls the coordinator (outbound only) and contributes masked sums."""


@site.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="site.toml (written by genofed provision).")
@click.option("--once", is_flag=True, help="Exit when the jobs this site took part in have finished; also exit (0) after --max-idle seconds (default 60) with no job, and with status 1 when the coordinator has not answered for 60 s.")
@click.option("--max-idle", type=click.FloatRange(min=0), default=None, help="Exit after this many seconds without an active job (0); with status 1 when the coordinator did not answer in that time.")
@json_option
@log_format_option
@handles_errors
def site_run(config_path: Path, once: bool, max_idle: float | None, as_json: bool, log_format: str) -> None:
    """Run the site agent: policy checks, local step, masking, upload; survives coordinator restarts.

    SIGTERM stops it with status 0 and its stop line: at once while it waits for the
    coordinator, after the step at hand while it works (its state folder lets a new
    agent resume either way).
    """
    from pipeline.federation.agent import run_site
    from pipeline.federation.config import load_site_config

    has_started = False

    def started(line: dict[str, Any]) -> None:
        import datetime as dt

        nonlocal has_started
        has_started = True
        _echo_event("site.started", as_json=as_json, log_format=log_format, **line)
        _warn_expiry(f"site {line['site']}", load_site_config(config_path).cert,
                     dt.datetime.fromisoformat(line["certificate_expires"]), as_json=as_json, log_format=log_format)

    try:
        summary = run_site(config_path, once=once, max_idle=max_idle, on_start=started)
    except GenofedError as error:
        if has_started:  # an agent that never started (a wrong config, an impostor) has only its error line
            cause = getattr(error, "cause", None)
            reason = f"fatal TLS cause: {cause}" if getattr(error, "permanent", False) else (
                "coordinator gone" if cause is not None or "has not answered" in str(error) else "error")
            _echo_event("site.stopped", as_json=as_json, log_format=log_format, reason=reason)
        raise
    if log_format == "json":
        from pipeline.logs import event_extra

        _EVENTS.info("genofed: site stopped", extra=event_extra("site.stopped", summary))
    if as_json:
        click.echo(json.dumps({"event": "site.stopped", **summary}, sort_keys=True, default=str))
    else:
        click.echo(f"site {summary['site']}: stopped ({summary['stopped']}); {summary['tasks']} tasks in jobs "
                   f"{', '.join(summary['jobs']) or 'none'}")


@site.command("budget")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="site.toml (written by genofed provision).")
@json_option
@handles_errors
def site_budget(config_path: Path, as_json: bool) -> None:
    """Show this site's differential-privacy spending: in all, by analyst, and per noisy release.

    The budget ([policy.privacy] epsilon_budget in site.toml) is the site's over every
    analyst's jobs together; each noisy round it took part in is listed with its
    zCDP rho, its (epsilon, delta) and the noise sigma it added.
    """
    from pipeline.federation.budget import (
        SPEND_FILE,
        PrivacyBudget,
        report_text,
        spending_report,
    )
    from pipeline.federation.config import load_site_config

    config = load_site_config(config_path, check_files=False)
    report = spending_report(PrivacyBudget(config.state_dir / SPEND_FILE), config.policy.privacy)
    echo_summary(report, as_json=as_json, text=report_text(report))


@main.group()
def job() -> None:
    """Submit federated jobs and collect their results (as an analyst; an operator reads any job)."""


_analyst_config_option = _client_config_option("GENOFED_ANALYST_CONFIG", "analyst.toml, or an operator's operator.toml")


@job.command("submit")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_analyst_config_option
@click.option("--threshold", type=click.IntRange(min=2), default=None, help="Sites that must answer each stage (overrides the spec; default two thirds of the sites plus one, the least each site accepts unless its policy says threshold_rule = \"majority\").")
@json_option
@handles_errors
def job_submit(spec: Path, config_path: Path, threshold: int | None, as_json: bool) -> None:
    """Submit the job SPEC (YAML, e.g. workflows/census.yaml); prints its ID."""
    from pipeline.federation.analyst import submit_job

    answer = submit_job(config_path, spec, threshold=threshold)
    echo_summary(answer, as_json=as_json, text=answer["job_id"])


@job.command("list")
@_analyst_config_option
@json_option
@handles_errors
def job_list_command(config_path: Path, as_json: bool) -> None:
    """List jobs, newest first: an analyst's own, or every job for an operator."""
    from pipeline.federation.analyst import list_jobs

    jobs = list_jobs(config_path)
    lines = [f"{j['job_id']}  {j['analysis']:<12} {j['status']:<8} {j['analyst']}" for j in jobs] or ["no jobs"]
    echo_summary({"jobs": jobs}, as_json=as_json, text="\n".join(lines))


@job.command("status")
@click.argument("job_id")
@_analyst_config_option
@json_option
@handles_errors
def job_status_command(job_id: str, config_path: Path, as_json: bool) -> None:
    """Show a job's status and, per site, whether it took part, declined (its code) or dropped (the rounds it missed).

    \b
    Exit status: 0 running or done, 1 failed, 2 cancelled (the status is printed either way).
    """
    from pipeline.federation.analyst import EXIT_CODES, job_status, status_text

    status = job_status(config_path, job_id)
    echo_summary(status, as_json=as_json, text=status_text(status))
    if status["status"] in ("failed", "cancelled"):
        sys.exit(EXIT_CODES[status["status"]])


@job.command("wait")
@click.argument("job_id")
@_analyst_config_option
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up waiting after this many seconds (exit 3) [default: wait until the job ends].")
@click.option("--progress/--no-progress", default=None,
              help="Print the job's round, stage and awaited sites on stderr each time they change (default: only when "
                   "stderr is a terminal).")
@json_option
@handles_errors
def job_wait_command(job_id: str, config_path: Path, timeout: float | None, progress: bool | None, as_json: bool) -> None:
    """Wait until a job ends, print its final status; the exit status says how it ended.

    Long-polls the coordinator, which answers as soon as the job ends (one request
    every 25 s while it runs; every 2 s with --progress).

    \b
    Exit status:
      0  the job is done (get its results with 'genofed job results')
      1  the job failed (the status line says why), or an error (one line on stderr)
      2  the job was cancelled
      3  --timeout passed while the job was still running (it goes on)
    """
    from pipeline.federation.analyst import EXIT_CODES, status_text, wait_job

    shown = ""

    def show(running: dict[str, Any]) -> None:
        nonlocal shown
        line = status_text(running).splitlines()[0]  # job, analysis, round, stage, awaited sites
        if line != shown:
            click.echo(line, err=True)
            shown = line

    status = wait_job(config_path, job_id, timeout=timeout, on_progress=show if resolve_progress(progress) else None)
    echo_summary(status, as_json=as_json, text=status_text(status))
    sys.exit(EXIT_CODES.get(status["status"], 1))


@job.command("cancel")
@click.argument("job_id")
@_analyst_config_option
@json_option
@handles_errors
def job_cancel_command(job_id: str, config_path: Path, as_json: bool) -> None:
    """Cancel a running job: an analyst their own, an operator any. Its sites stop at their next poll.

    A job that has already ended cannot be cancelled (exit 1, naming its status).
    """
    from pipeline.federation.analyst import cancel_job, status_text

    status = cancel_job(config_path, job_id)
    echo_summary(status, as_json=as_json, text=status_text(status))


@job.command("results")
@click.argument("job_id")
@_analyst_config_option
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create: summary.json and one Parquet file per table.")
@force_option
@json_option
@handles_errors
def job_results(job_id: str, config_path: Path, out: Path, force: bool, as_json: bool) -> None:
    """Download a finished job's results, and show which sites took part, declined or dropped.

    The folder appears only once everything is written: a download that fails leaves nothing behind.
    """
    from pipeline.federation.analyst import participation_lines
    from pipeline.federation.analyst_results import fetch_results

    summary = fetch_results(config_path, job_id, out, force=force)
    lines = [f"{job_id}: {', '.join(summary['tables'])} and summary.json written to {summary['out']}",
             *participation_lines(summary["job_status"], summary["summary"])]
    echo_summary(summary, as_json=as_json, text="\n".join(lines))


@main.command("federate")
@click.option("--site", "datasets", multiple=True, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="A site's dataset folder; repeat for each site.")
@click.option("--job", "spec", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Job spec (YAML), e.g. workflows/census.yaml.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create: federation/, logs/, results/.")
@click.option("--threshold", type=click.IntRange(min=2), default=None, help="Sites that must answer each stage (overrides the spec; default two thirds of the sites plus one, the least each site accepts unless its policy says threshold_rule = \"majority\").")
@click.option("--timeout", type=click.FloatRange(min=1), default=900.0, show_default=True, help="Seconds to wait for the job.")
@force_option
@json_option
@handles_errors
def federate_command(datasets: tuple[Path, ...], spec: Path, out: Path, threshold: int | None, timeout: float, force: bool, as_json: bool) -> None:
    """Run a whole federation on this machine: coordinator and one agent per dataset, mutual TLS on 127.0.0.1.

    \b
    Example:
      genofed federate --site a.dataset --site b.dataset --site c.dataset --job workflows/census.yaml --out fed-run
    """
    from pipeline.federation.localhost import federate, summary_text

    summary = federate(list(datasets), spec, out, threshold=threshold, timeout=timeout, force=force)
    echo_summary(summary, as_json=as_json, text=summary_text(summary))


@main.group()
def workflow() -> None:
    """Site workflows: workflows/*.yaml files with 'kind: workflow' (site-prep, gwas, pca, train).

    A site workflow chains steps a site runs on its own data (ingest -> qc -> taking part
    in federated jobs), with parameters, inputs and outputs. It is not a job spec: files
    with 'analysis: NAME' (workflows/census.yaml) are submitted by an analyst with
    'genofed job submit'. Steps whose inputs and parameters did not change since they
    last succeeded are skipped (a record with content hashes sits in each output
    folder); after a failure, the same command resumes at the failed step.
    """


def _workflow_args(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None, help="Working folder: run records, batch scripts, logs [default: SITE_DIR/runs/WORKFLOW].")(func)
    func = click.option("--param", "param_pairs", multiple=True, metavar="NAME=VALUE", help="A workflow parameter, e.g. --param vcf=site-1.vcf.gz; repeat.")(func)
    func = click.option("--site", "site_path", required=True, envvar="GENOFED_SITE_CONFIG", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="The site's site.toml [env GENOFED_SITE_CONFIG].")(func)
    return click.argument("workflow_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))(func)


@workflow.command("run")
@_workflow_args
@click.option("--dry-run", is_flag=True, help="Print the plan (what would run and why), run nothing.")
@click.option("--only", multiple=True, metavar="STEP", help="Run only this step (its inputs must be up to date); repeat.")
@click.option("--rerun", multiple=True, metavar="STEP", help="Run this step even if it is up to date; repeat.")
@cluster_options
@click.option("--part", type=click.IntRange(min=0), default=None, hidden=True)
@click.option("--parts", type=click.IntRange(min=1), default=None, hidden=True)
@progress_option
@json_option
@handles_errors
def workflow_run(
    workflow_file: Path, site_path: Path, param_pairs: tuple[str, ...], work: Path | None, dry_run: bool, only: tuple[str, ...],
    rerun: tuple[str, ...], scheduler: str, workers: int | None, queue: str | None, cores: int | None, memory: str | None,
    walltime: str | None, account: str | None, jobs: int, performance_report: Path | None, part: int | None, parts: int | None,
    progress: bool | None, as_json: bool,
) -> None:
    """Run a site workflow FILE: print the plan, run the out-of-date steps, skip the rest.

    \b
    Examples:
      genofed workflow run workflows/site-prep.yaml --site sites/site-1/site.toml --param vcf=site-1.vcf.gz --dry-run
      genofed workflow run workflows/site-prep.yaml --site sites/site-1/site.toml --param vcf=site-1.vcf.gz --scheduler slurm --cores 8 --memory 16GB --jobs 4
    """
    from pipeline.workflow.plan import parse_param_overrides
    from pipeline.workflow.run import run_workflow

    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    summary = run_workflow(
        workflow_file, site=site_path, params=parse_param_overrides(param_pairs), work=work, dry_run=dry_run, only=only,
        rerun=rerun, scheduler=scheduler, workers=workers, cluster=_cluster(queue, cores, memory, walltime, account, jobs),
        performance_report=performance_report, progress=resolve_progress(progress), part=part, parts=parts, say=say,
    )
    if as_json:
        echo_summary(summary, as_json=True, text="")


@workflow.command("submit")
@_workflow_args
@click.option("--scheduler", type=click.Choice(["slurm", "pbs"]), default="slurm", show_default=True, help="Batch system to submit to (step jobs are written for Slurm's sbatch).")
@click.option("--partition", "--queue", "partition", default=None, help="sbatch --partition of every step job.")
@click.option("--account", default=None, help="sbatch --account.")
@click.option("--walltime", default=None, help="sbatch --time, e.g. 04:00:00.")
@click.option("--cpus", type=click.IntRange(min=1), default=None, help="sbatch --cpus-per-task (the job's Dask threads).")
@click.option("--memory", default=None, help="sbatch --mem, e.g. 16G.")
@click.option("--max-array", type=click.IntRange(min=1), default=32, show_default=True, help="Most tasks of a per-region ingest array job (1: no array).")
@click.option("--sbatch-option", "extra", multiple=True, help="Another #SBATCH option, verbatim (e.g. --qos=short); repeat.")
@click.option("--step-scheduler", default="processes", show_default=True, help="--scheduler inside each step job (processes use the job's cores).")
@click.option("--federated-on", type=click.Choice(["batch", "login"]), default="batch", show_default=True, help="Where federated steps run: as batch jobs (compute nodes with outbound HTTPS) or left for the agent's login/service node.")
@click.option("--rerun", multiple=True, metavar="STEP", help="Submit this step even if it is up to date; repeat.")
@click.option("--dry-run", is_flag=True, help="Write the sbatch scripts, submit nothing.")
@json_option
@handles_errors
def workflow_submit(
    workflow_file: Path, site_path: Path, param_pairs: tuple[str, ...], work: Path | None, scheduler: str, partition: str | None,
    account: str | None, walltime: str | None, cpus: int | None, memory: str | None, max_array: int, extra: tuple[str, ...],
    step_scheduler: str, federated_on: str, rerun: tuple[str, ...], dry_run: bool, as_json: bool,
) -> None:
    """Submit a site workflow FILE as batch jobs: one per out-of-date step, chained by afterok.

    An indexed VCF's ingest becomes an array job over its genomic regions plus an
    assembling job. Scripts go to WORK/slurm/, logs to WORK/logs/STEP-JOBID.out; follow
    them with 'genofed workflow status'.

    \b
    Example:
      genofed workflow submit workflows/site-prep.yaml --site sites/site-1/site.toml --param vcf=/data/site-1.bcf --partition short --cpus 4 --memory 8G
    """
    from pipeline.errors import ConfigurationError
    from pipeline.workflow.plan import parse_param_overrides
    from pipeline.workflow.slurm import BatchOptions, submit_workflow

    if scheduler == "pbs":
        raise ConfigurationError(
            "batch submission writes Slurm (sbatch) jobs; on PBS run the workflow with "
            "'genofed workflow run ... --scheduler pbs' (Dask workers as PBS jobs via dask-jobqueue)"
        )
    options = BatchOptions(partition=partition, account=account, walltime=walltime, cpus=cpus, memory=memory, max_array=max_array, extra=extra)
    summary = submit_workflow(
        workflow_file, site=site_path, params=parse_param_overrides(param_pairs), work=work, options=options,
        step_scheduler=step_scheduler, federated_on=federated_on, rerun=rerun, dry_run=dry_run,
    )
    lines = [f"workflow {summary['workflow']} for site {summary['site']}: {'scripts written' if dry_run else 'submitted'} ({summary['work']})"]
    for step in summary["steps"]:
        job = step.get("job_id", "")
        array = f" array {step['array_job_id']} x{step['parts']}" if step.get("array_job_id") else ""
        lines.append(f"  {step['action']:<10} {step['name']:<12} {job}{array}  {step.get('script', step.get('reason', ''))}")
    if summary.get("login_node_command"):
        lines.append(f"once the jobs are done, on the agent's node: {summary['login_node_command']}")
    echo_summary(summary, as_json=as_json, text="\n".join(lines))


@workflow.command("status")
@_workflow_args
@json_option
@handles_errors
def workflow_status_command(workflow_file: Path, site_path: Path, param_pairs: tuple[str, ...], work: Path | None, as_json: bool) -> None:
    """Show each step of a site workflow: up to date or not, last run, batch job states and logs."""
    from pipeline.workflow.plan import parse_param_overrides
    from pipeline.workflow.slurm import workflow_status

    status = workflow_status(workflow_file, site=site_path, params=parse_param_overrides(param_pairs) or None, work=work)
    lines = [f"workflow {status['workflow']} for site {status['site']} ({status['work']})"]
    for row in status["steps"]:
        jobs = " ".join(f"{key.split('_')[0]} {row[key]} {row[key.replace('id', 'state')]}" for key in ("array_job_id", "job_id") if key in row)
        lines.append(f"  {'done' if row['up_to_date'] else 'todo':<5} {row['name']:<12} {row['reason']}  {jobs}  {row.get('log', '')}".rstrip())
    echo_summary(status, as_json=as_json, text="\n".join(lines))


@workflow.command("validate")
@click.argument("files", metavar="FILE...", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@handles_errors
def workflow_validate(files: tuple[Path, ...], as_json: bool) -> None:
    """Check site workflow files; errors name the file and line (FILE:LINE: ...)."""
    from pipeline.workflow.spec import load_workflow

    specs = [load_workflow(path) for path in files]
    summary = {"workflows": [{"file": str(s.path), "name": s.name, "steps": [[t.name, t.run] for t in s.steps], "params": list(s.params)} for s in specs]}
    text = "\n".join(f"{s.path}: workflow {s.name} ok: " + " -> ".join(f"{t.name} ({t.run})" for t in s.steps) for s in specs)
    echo_summary(summary, as_json=as_json, text=text)


@main.command("predict")
@click.option("--model", "model", required=True, type=click.Path(exists=True, path_type=Path), help="A trained model: model.json, or a training job's results folder or summary.json.")
@click.option("--dataset", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="This site's dataset folder (genofed ingest --out).")
@click.option("--out", default="predictions.parquet", show_default=True, type=click.Path(path_type=Path), help="Parquet file to write: sample_id, prediction.")
@force_option
@json_option
@handles_errors
def predict_command(model: Path, dataset: Path, out: Path, force: bool, as_json: bool) -> None:
    """Score this site's samples with a federated model, locally (nothing is sent anywhere).

    The prediction is the probability of a binary trait, or the value of a
    quantitative trait in its own units.
    """
    from pipeline.models.checkpoint import predict_dataset

    summary = predict_dataset(model, dataset, out, force=force)
    echo_summary(summary, as_json=as_json, text=f"{summary['samples_scored']} samples scored ({summary['target']}, {summary['task']}); {summary['samples_skipped']} without covariates skipped; written to {summary['out']}")


if __name__ == "__main__":  # pragma: no cover
    main()
