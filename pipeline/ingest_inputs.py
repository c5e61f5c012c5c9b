"""The input files of one ingest: several VCF/BCF files that make one dataset.

A site often holds its genome as one file per chromosome. An ingest takes them as a
list, as a list file (:func:`read_vcf_list`) or as a ``{chrom}`` pattern
(:func:`expand_pattern`), and treats them as one file cut by contig, as ``bcftools
concat`` would join them:

- every input has the same samples in the same order (:func:`check_same_samples`);
- a contig comes from one input only (:func:`refuse_shared_contigs`), compared after
  renaming to ``--contig-style`` so that ``chr1`` in one file and ``1`` in another are the
  same contig. Merging one contig's records from two files would need an order and a
  rule for the overlap; refusing keeps the dataset what a single file would give.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.errors import InputError
from pipeline.harmonize.contigs import canonical_contig
from pipeline.io.sources import Source

__all__ = [
    "CHROMS",
    "CHROM_PATTERN",
    "check_same_samples",
    "describe_inputs",
    "expand_inputs",
    "expand_pattern",
    "read_vcf_list",
    "refuse_shared_contigs",
]

CHROM_PATTERN = "{chrom}"
CHROMS = (*(str(n) for n in range(1, 23)), "X", "Y", "MT")
"""What ``{chrom}`` stands for, in this order (the order of the inputs, hence of the chunks)."""


def expand_pattern(pattern: str, suffix: str = "") -> list[str]:
    """The inputs ``pattern`` names with ``{chrom}`` replaced by each of :data:`CHROMS`, in that order, whose file (``+ suffix``) exists.

    ``suffix`` is for inputs named by a prefix (``.pgen`` for PLINK 2 filesets, ``.bed`` for PLINK 1).

    Raises:
        InputError: no such file exists.
    """
    found = [path for path in (pattern.replace(CHROM_PATTERN, chrom) for chrom in CHROMS) if Path(path + suffix).is_file()]
    if not found:
        raise InputError(
            f"{pattern}: no file matches the pattern ({CHROM_PATTERN} = {', '.join(CHROMS[:3])}, ..., 22, X, Y, MT); "
            "check the folder and the file names (for example 'site.chr{chrom}.vcf.gz' for site.chr1.vcf.gz ...)"
        )
    return found


def read_vcf_list(path: str | Path) -> list[str]:
    """The paths a list file names, one a line; blank lines and ``#`` lines skipped, relative paths relative to the list.

    Raises:
        InputError: the list cannot be read or names no file.
    """
    list_path = Path(path)
    try:
        lines = list_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{list_path}: cannot read the VCF list ({getattr(error, 'strerror', None) or error})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise InputError(f"{list_path}: the VCF list names no file; write one VCF/BCF path a line")
    return [entry if Path(entry).is_absolute() else str(list_path.parent / entry) for entry in entries]


def expand_inputs(vcf: str | Path | Sequence[str | Path], suffix: str = "") -> list[str]:
    """The input paths (or fileset prefixes, whose files end in ``suffix``) of an ingest, in order: each ``{chrom}`` pattern expanded.

    Raises:
        InputError: no input, a pattern that matches nothing, or a file given twice.
    """
    given = [vcf] if isinstance(vcf, (str, Path)) else list(vcf)
    if not given:
        raise InputError("no input VCF given; give --vcf (repeatable, or a {chrom} pattern) or --vcf-list")
    paths = [path for item in given for path in (expand_pattern(str(item), suffix) if CHROM_PATTERN in str(item) else [str(item)])]
    seen: dict[Path, str] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise InputError(f"{path}: given twice as an input (also as {seen[key]}); give each file once")
        seen[key] = path
    return paths


def describe_inputs(paths: Sequence[str]) -> str:
    """The inputs in one short phrase for messages (``a.vcf``, ``a.vcf and 21 more inputs``)."""
    return paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more input{'s' if len(paths) > 2 else ''}"


def check_same_samples(paths: Sequence[str], sources: Sequence[Source]) -> None:
    """Refuses inputs whose samples differ from the first input's, naming both files and the first differing position.

    Raises:
        InputError: the samples or their order differ.
    """
    first, expected = paths[0], sources[0].samples
    for path, source in zip(paths[1:], sources[1:]):
        samples = source.samples
        if samples == expected:
            continue
        position = next((i for i, (a, b) in enumerate(zip(expected, samples)) if a != b), min(len(expected), len(samples)))
        shown = " and ".join(
            f"{'nothing' if position >= len(names) else repr(names[position])} in {name}" for name, names in ((first, expected), (path, samples))
        )
        sizes = f" ({len(samples)} samples, {len(expected)} there)" if len(samples) != len(expected) else ""
        raise InputError(
            f"{path}: its samples differ from those of {first}{sizes}; the first difference is "
            f"sample {position + 1} (column {position + 10}): {shown}. Every input must have the same samples in the same order, "
            f"as 'bcftools concat' requires: reorder with 'bcftools view -S samples.txt' (the samples of {first})"
        )


def refuse_shared_contigs(contigs_by_input: Iterable[tuple[str, Iterable[str]]], contig_style: str) -> None:
    """Refuses a contig (after renaming to ``contig_style``) with records in two inputs (paths are distinct).

    Args:
        contigs_by_input: ``(path, contigs with records in it, as the file names them)`` per input.

    Raises:
        InputError: naming the contig and both files.
    """
    owner: dict[str, tuple[str, str]] = {}
    for path, contigs in contigs_by_input:
        for contig in dict.fromkeys(contigs):
            name = canonical_contig(contig, contig_style)
            other, other_contig = owner.setdefault(name, (path, contig))
            if other == path:  # two names of one contig in one file: the duplicate check's to describe
                continue
            both = repr(contig) if contig == other_contig else f"{other_contig!r} in {other} and {contig!r} in {path}, both {name!r} with --contig-style {contig_style}"
            raise InputError(
                f"{path}: contig {both} has records in both {other} and {path}; genofed takes each contig from one input file "
                f"only: remove it from one of them (for example 'bcftools view -t ^{contig}'), or join the files with "
                "'bcftools concat -a' and ingest the result"
            )
