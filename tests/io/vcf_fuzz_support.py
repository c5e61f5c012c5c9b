"""A seeded fuzzer for ``genofed ingest``: mutated VCFs in every input form, judged against bcftools.

Each case starts from a small valid VCF (generated here from the case's seed: a few
declared contigs, 5-40 records, 3-8 samples, diploid GT with missing calls, multi-allelic
records, optional DS, INFO, phased and unphased calls; or one of htslib's test VCFs when
the Debian package ``htslib-test`` is installed), applies 0-3 seeded mutations (byte
flips, deleted/duplicated/swapped lines, truncation, changed POS/REF/ALT/GT/DS, odd
whitespace, non-ASCII and non-UTF-8 bytes, removed header lines, huge numbers, empty
fields, extra or missing columns, FORMAT without GT, ...) and writes the result in every
form genofed reads::

    vcf          plain text
    vcf.gz       bgzip, no index (sometimes with its compressed bytes damaged)
    vcf.gz+tbi   bgzip + tabix -p vcf
    vcf.gz+csi   bgzip + tabix --csi -p vcf
    bcf          bcftools view -Ob, no index (sometimes damaged)
    bcf+csi      bcftools view -Ob + bcftools index -c

A form is *tried* only when the tools can make it (tabix refuses unsorted files,
``bcftools view -Ob`` refuses what htslib cannot parse); otherwise it is skipped.

Every tried input is ingested in process (``pipeline.ingest.ingest`` with the
synchronous scheduler, ``contig_style`` ``keep`` or sometimes ``chr``, ``chunk_size``
1kb, 100 bases or the default for generated inputs; 1Mb or the default for htslib's
files, whose contigs are declared up to 2^31 bases long, as planning visits every window
of a contig) under a ``SIGALRM`` time limit (5 s), and classified:

- ``equal``: ingest succeeded and its calls equal bcftools' reading of the same file;
- ``refused``: ingest raised a :class:`pipeline.errors.GenofedError` whose message is one
  line naming the input file, and no output folder (nor a temporary one) was left;
- ``bad_refusal``: a GenofedError without those properties (several lines, no file
  name, or an output folder left behind) -- counted as a failure;
- ``disagree``: ingest succeeded but its calls differ from bcftools', or bcftools
  refused the file (see below) while genofed accepted it;
- ``traceback``: any other exception;
- ``hang``: the time limit was hit.

How bcftools' reading is taken, and what counts as agreeing (decisions):

1. The reference is ``bcftools query -f '%CHROM\\t%POS\\t%REF\\t%ALT[\\t%GT]...'`` on the
   very file genofed read (with ``[\\t%DS]`` when the file's DS can be queried).
   ``bcftools query`` exits 0 even after htslib reports an error (it skips the
   record or stops reading), so *any* ``[E::`` line on its stderr, or a non-zero exit,
   means bcftools refused the file. htslib warnings (``[W::``: an undeclared contig,
   INFO or FORMAT key, which htslib adds to the header) are leniency, not refusal.
   bcftools crashing (a signal) counts as refusing too.
   A GT that bcftools prints but that is no genotype (``-65``, from a BCF whose GT
   bytes are garbage) also counts as bcftools refusing the file.
2. The biallelic split, allele trimming and drops are applied to bcftools' records
   by :func:`naive_harmonize`, written from the documented semantics (``bcftools norm
   -m-`` GT recoding, minimal representation, alleles upper-cased, records without ALT,
   with symbolic/non-ACGTN alleles or with ALT == REF dropped), not from genofed's code.
   Calls become ALT dosages: -1 if any allele is missing (or no allele at all), a
   haploid call counts twice (0/2, as plink stores it), others count their ALT alleles.
   DS is compared with a relative tolerance of 1e-4 (bcftools prints ~6 digits; a
   haploid called genotype's DS is doubled, as genofed stores it on the 0..2 scale);
   a chunk stored without DS reads as all-missing DS.
3. Variants are compared as a sorted multiset of (contig, pos, ref, alt, calls, DS), so
   the order genofed writes chunks in does not matter.
4. bcftools refused but genofed accepted: the input's text (every form but the damaged
   ones is made from it) is *sanitized*: QUAL, FILTER and INFO set to '.', FORMAT
   reduced to GT and DS, meta lines other than fileformat and contig removed, an empty
   sample column or GT value written '.' (htslib 1.16 reads an empty GT as allele -65,
   without an error, and bcftools writes that into a BCF), a GT's leading phase mark (VCF 4.4 ``|1``, which
   genofed reads on purpose and htslib 1.16 refuses) dropped, and '#' lines after the
   header removed (comments, as tabix reads them) -- what genofed never reads, or reads
   as missing. When bcftools reads the sanitized text without error
   and the calls are equal, the case is ``equal``, with a note (bcftools was strict
   about something genofed ignores). Otherwise it is a ``disagree`` ("genofed accepted
   what bcftools refuses").
   htslib ends a text line at a NUL byte without an error, so its reading of a record
   holding one is wrong; genofed accepting such a record shows as ``disagree`` (the
   right answer is refusing it: a NUL byte is not VCF text).
5. genofed refusing a file bcftools reads is ``refused`` (genofed is stricter on
   purpose: unsorted records, undeclared contigs, bad GT...). Such cases are listed
   in the report as ``refused, bcftools reads it`` for information, not as failures.
6. Contig style ``chr`` is compared through :func:`naive_contig` ('22' -> 'chr22',
   'MT'/'M' -> 'chrM').

Run outside pytest::

    python -m tests.io.vcf_fuzz_support --seed 1 --count 300 --keep /tmp/fuzz
    python -m tests.io.vcf_fuzz_support --case-seed 1431062110 --keep /tmp/fuzz   # one case again

prints the tally per form and every failure; failing inputs are copied into ``--keep``
with a ``failures.txt`` giving each case's ``genofed ingest`` command.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.test_ingest import naive_trim  # common suffix, then prefix, removed while both alleles keep a base

FORMS = ("vcf", "vcf.gz", "vcf.gz+tbi", "vcf.gz+csi", "bcf", "bcf+csi")
KINDS = ("equal", "refused", "bad_refusal", "disagree", "traceback", "hang")
FAILURE_KINDS = ("bad_refusal", "disagree", "traceback", "hang")
HTSLIB_TEST_DIR = Path("/usr/share/htslib-test/test")
TOOLS = ("bcftools", "bgzip", "tabix")
TOOL_TIMEOUT_S = 30

# --- base inputs ------------------------------------------------------------------------

_CONTIG_NAMES = ["chr1", "chr2", "chr22", "1", "2", "22", "X", "chrX", "MT", "chrM"]
_BASES = "ACGT"


def generate_vcf(rng: random.Random) -> bytes:
    """A small valid VCF: declared contigs, 5-40 sorted records, 3-8 samples, GT (+DS)."""
    contigs = rng.sample(_CONTIG_NAMES, rng.randint(1, 3))
    lengths = {name: rng.choice([None, 5000, 100000]) for name in contigs}
    samples = [f"S{j}" for j in range(rng.randint(3, 8))]
    with_ds = rng.random() < 0.5
    lines = ["##fileformat=VCFv4.2", '##FILTER=<ID=PASS,Description="All filters passed">']
    for name in contigs:
        lines.append(f"##contig=<ID={name},length={lengths[name]}>" if lengths[name] else f"##contig=<ID={name}>")
    lines += [
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">',
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele frequency">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">',
        '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]),
    ]
    n_records = rng.randint(5, 40)
    per_contig = [0] * len(contigs)
    for _ in range(n_records):
        per_contig[rng.randrange(len(contigs))] += 1
    for name, count in zip(contigs, per_contig):
        limit = (lengths[name] or 5000) - 10
        positions = sorted(rng.sample(range(1, min(limit, 5000)), count))
        for pos in positions:
            lines.append(_generate_record(rng, name, pos, samples, with_ds))
    return ("\n".join(lines) + "\n").encode()


def _generate_record(rng: random.Random, contig: str, pos: int, samples: list[str], with_ds: bool) -> str:
    ref = rng.choice(_BASES) if rng.random() < 0.8 else "".join(rng.choice(_BASES) for _ in range(rng.randint(2, 4)))
    n_alts = rng.choices([1, 2, 3], weights=[75, 18, 7])[0]
    alts: list[str] = []
    while len(alts) < n_alts:
        roll = rng.random()
        if roll < 0.7:
            alt = rng.choice(_BASES)
        elif roll < 0.85:
            alt = ref[0] + "".join(rng.choice(_BASES) for _ in range(rng.randint(1, 3)))  # insertion
        elif roll < 0.95 and len(ref) > 1:
            alt = ref[0]  # deletion
        else:
            alt = ref[:-1] + rng.choice(_BASES) + "".join(rng.choice(_BASES) for _ in range(rng.randint(0, 1)))
        if alt != ref and alt not in alts:
            alts.append(alt)
    if rng.random() < 0.05:
        alts[-1] = rng.choice(["*", "<DEL>"])
    if rng.random() < 0.05:
        ref, alts = ref.lower(), [a.lower() if not a.startswith("<") else a for a in alts]
    phased = rng.random() < 0.3
    fmt = rng.choice(["GT", "GT", "GT:GQ", "GQ:GT"])
    if with_ds:
        fmt = rng.choice(["GT:DS", "GT:DS", "DS:GT", "GT:GQ:DS"])
    keys = fmt.split(":")
    cells = []
    for _ in samples:
        roll = rng.random()
        if roll < 0.08:
            gt = rng.choice(["./.", ".", ".|.", "./1", "0/."])
        elif roll < 0.12:
            gt = str(rng.randint(0, n_alts))  # haploid
        else:
            a, b = rng.randint(0, n_alts), rng.randint(0, n_alts)
            gt = f"{a}{'|' if phased else '/'}{b}"
        values = {"GT": gt, "GQ": str(rng.randint(0, 99))}
        if "DS" in keys:
            values["DS"] = "." if rng.random() < 0.1 else ",".join(f"{rng.uniform(0, 2):.3f}" for _ in range(n_alts))
        cells.append(":".join(values[k] for k in keys))
    info = rng.choice([".", f"DP={rng.randint(1, 90)}", f"DP={rng.randint(1, 90)};AF=" + ",".join(f"{rng.random():.2f}" for _ in alts)])
    record_id = "." if rng.random() < 0.6 else f"rs{rng.randint(1, 10**7)}"
    qual = rng.choice([".", "50", "99.5"])
    return "\t".join([contig, str(pos), record_id, ref, ",".join(alts), qual, rng.choice(["PASS", "."]), info, fmt, *cells])


def htslib_seed_files() -> list[Path]:
    """htslib's small test VCFs (Debian package htslib-test), or [] when absent."""
    if not HTSLIB_TEST_DIR.is_dir():
        return []
    found = [p for p in sorted(HTSLIB_TEST_DIR.rglob("*.vcf")) if p.stat().st_size <= 64_000]
    return found


# --- mutations ----------------------------------------------------------------------------

Mutation = Callable[[bytes, random.Random], bytes]


def _split(data: bytes) -> tuple[list[bytes], list[int]]:
    lines = data.split(b"\n")
    records = [i for i, line in enumerate(lines) if line and not line.startswith(b"#")]
    return lines, records


def _edit_one_record(data: bytes, rng: random.Random, edit: Callable[[list[bytes]], bool | None]) -> bytes:
    """``data`` with one record, drawn by ``rng``, edited in place by ``edit(fields)`` (which returns False to leave it be)."""
    lines, records = _split(data)
    if not records:
        return data
    i = rng.choice(records)
    fields = lines[i].split(b"\t")
    if edit(fields) is False:
        return data
    lines[i] = b"\t".join(fields)
    return b"\n".join(lines)


def _on_record_field(column: int, values: Callable[[random.Random, bytes], bytes]) -> Mutation:
    def mutate(data: bytes, rng: random.Random) -> bytes:
        def edit(fields: list[bytes]) -> bool:
            if column >= len(fields):
                return False
            fields[column] = values(rng, fields[column])
            return True

        return _edit_one_record(data, rng, edit)

    return mutate


def _on_sample_key(key: bytes, values: Callable[[random.Random, bytes], bytes]) -> Mutation:
    """Changes the ``key`` value of one sample cell of one record that has ``key``."""

    def mutate(data: bytes, rng: random.Random) -> bytes:
        lines, records = _split(data)
        candidates = []
        for i in records:
            fields = lines[i].split(b"\t")
            if len(fields) > 9 and key in fields[8].split(b":"):
                candidates.append(i)
        if not candidates:
            return data
        i = rng.choice(candidates)
        fields = lines[i].split(b"\t")
        k = fields[8].split(b":").index(key)
        j = rng.randrange(9, len(fields))
        parts = fields[j].split(b":")
        while len(parts) <= k:
            parts.append(b".")
        parts[k] = values(rng, parts[k])
        fields[j] = b":".join(parts)
        lines[i] = b"\t".join(fields)
        return b"\n".join(lines)

    return mutate


def _byte_flip(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    body = data.find(b"\n#CHROM")
    low = body + 1 if body >= 0 and rng.random() < 0.8 else 0
    i = rng.randrange(low, len(data))
    buffer = bytearray(data)
    buffer[i] = rng.choice([rng.randrange(256), ord(rng.choice("0123456789./|:\t,;ACGTN#-e"))])
    return bytes(buffer)


def _delete_line(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    i = rng.choice(records) if records and rng.random() < 0.7 else rng.randrange(len(lines))
    return b"\n".join(lines[:i] + lines[i + 1 :])


def _duplicate_line(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    if not records:
        return data
    i = rng.choice(records)
    return b"\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])


def _swap_lines(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    if len(records) < 2:
        return data
    a = rng.randrange(len(records) - 1)
    b = a + 1 if rng.random() < 0.6 else rng.randrange(len(records))
    i, j = records[a], records[b]
    lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def _odd_whitespace(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    choice = rng.randrange(6)
    if choice == 0:
        return data.replace(b"\n", b"\r\n")
    if choice == 1 and records:  # a tab becomes spaces
        i = rng.choice(records)
        tabs = [k for k, c in enumerate(lines[i]) if c == 9]
        k = rng.choice(tabs) if tabs else 0
        lines[i] = lines[i][:k] + b"  " + lines[i][k + 1 :]
    elif choice == 2 and records:
        i = rng.choice(records)
        lines[i] += rng.choice([b" ", b"\t", b"\t\t", b"\r"])
    elif choice == 3:
        i = rng.randrange(len(lines))
        lines.insert(i, rng.choice([b"", b" ", b"\t", b"\r"]))
    elif choice == 4 and records:
        i = rng.choice(records)
        fields = lines[i].split(b"\t")
        k = rng.randrange(len(fields))
        fields[k] = rng.choice([b" ", b"\xa0"]) + fields[k] if rng.random() < 0.5 else fields[k] + b" "
        lines[i] = b"\t".join(fields)
    else:
        return data.rstrip(b"\n") if rng.random() < 0.5 else data + b"\n\n"
    return b"\n".join(lines)


def _insert_bytes(payloads: list[bytes]) -> Mutation:
    def mutate(data: bytes, rng: random.Random) -> bytes:
        lines, records = _split(data)
        header = [i for i, line in enumerate(lines) if line.startswith(b"#")]
        i = rng.choice(records) if records and rng.random() < 0.7 else rng.choice(header or [0])
        fields = lines[i].split(b"\t")
        k = rng.randrange(len(fields))
        payload = rng.choice(payloads)
        cut = rng.randint(0, len(fields[k]))
        fields[k] = fields[k][:cut] + payload + fields[k][cut:]
        lines[i] = b"\t".join(fields)
        return b"\n".join(lines)

    return mutate


def _remove_header_line(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    header = [i for i, line in enumerate(lines) if line.startswith(b"#")]
    if not header:
        return data
    contigs = [i for i in header if lines[i].startswith((b"##contig", b"##fileformat", b"#CHROM", b"##FORMAT=<ID=GT", b"##FORMAT=<ID=DS"))]
    i = rng.choice(contigs) if contigs and rng.random() < 0.7 else rng.choice(header)
    return b"\n".join(lines[:i] + lines[i + 1 :])


def _huge_number(data: bytes, rng: random.Random) -> bytes:
    huge = rng.choice([b"99999999999999999999", b"2147483647", b"2147483648", b"4294967296", b"1e400", b"-2147483649", b"536870912"])

    def edit(fields: list[bytes]) -> bool:
        k = rng.choice([1, 1, 5, 7] + list(range(9, len(fields))))
        if k >= len(fields):
            return False
        if k >= 9:
            parts = fields[k].split(b":")
            parts[rng.randrange(len(parts))] = huge
            fields[k] = b":".join(parts)
        elif k == 7:
            fields[k] = b"DP=" + huge
        else:
            fields[k] = huge
        return True

    return _edit_one_record(data, rng, edit)


def _empty_field(data: bytes, rng: random.Random) -> bytes:
    def edit(fields: list[bytes]) -> None:
        fields[rng.randrange(len(fields))] = b""

    return _edit_one_record(data, rng, edit)


def _extra_column(data: bytes, rng: random.Random) -> bytes:
    return _edit_one_record(data, rng, lambda fields: fields.insert(rng.randint(0, len(fields)), rng.choice([b"0/1", b".", b"x"])))


def _missing_column(data: bytes, rng: random.Random) -> bytes:
    def edit(fields: list[bytes]) -> None:
        del fields[rng.randrange(len(fields))]

    return _edit_one_record(data, rng, edit)


def _format_without_gt(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    targets = records if rng.random() < 0.3 else records[:1] and [rng.choice(records)]
    for i in targets:
        fields = lines[i].split(b"\t")
        if len(fields) <= 9:
            continue
        keys = fields[8].split(b":")
        if b"GT" not in keys:
            continue
        k = keys.index(b"GT")
        if len(keys) == 1:
            fields[8] = b"GQ"
            fields[9:] = [b"30" for _ in fields[9:]]
        else:
            fields[8] = b":".join(keys[:k] + keys[k + 1 :])
            fields[9:] = [b":".join(p for n, p in enumerate(cell.split(b":")) if n != k) for cell in fields[9:]]
        lines[i] = b"\t".join(fields)
    return b"\n".join(lines)


def _undeclared_contig(data: bytes, rng: random.Random) -> bytes:
    return _on_record_field(0, lambda r, old: r.choice([b"chrUn", b"chr1 ", b"", b"chr\xc3\xa9", b"GL000192.1", old.lower()]))(data, rng)


def _duplicate_sample(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"#CHROM"):
            fields = line.split(b"\t")
            if len(fields) > 10:
                fields[-1] = fields[9]
                lines[i] = b"\t".join(fields)
    return b"\n".join(lines)


def _short_sample_cell(data: bytes, rng: random.Random) -> bytes:
    """Drops trailing FORMAT values of some sample cells ('0/1:0.5' -> '0/1' or '0/1:')."""
    lines, records = _split(data)
    candidates = [i for i in records if len(lines[i].split(b"\t")) > 9 and b":" in lines[i].split(b"\t")[8]]
    if not candidates:
        return data
    i = rng.choice(candidates)
    fields = lines[i].split(b"\t")
    for j in range(9, len(fields)):
        if rng.random() < 0.5:
            parts = fields[j].split(b":")
            fields[j] = b":".join(parts[: rng.randint(0, len(parts) - 1)]) + rng.choice([b"", b":"])
    lines[i] = b"\t".join(fields)
    return b"\n".join(lines)


def _many_alts(data: bytes, rng: random.Random) -> bytes:
    """One record gets 10-14 ALT alleles and multi-digit GT indexes."""

    def edit(fields: list[bytes]) -> bool:
        if len(fields) < 10:
            return False
        ref = fields[3][:1] or b"A"
        n = rng.randint(10, 14)
        alts = [ref + bytes(rng.choice(b"ACGT") for _ in range(k)) for k in range(1, n + 1)]
        fields[4] = b",".join(alts)
        fields[3] = ref
        keys = fields[8].split(b":")
        for j in range(9, len(fields)):
            parts = fields[j].split(b":")
            while len(parts) < len(keys):
                parts.append(b".")
            for k, key in enumerate(keys):
                if key == b"GT":
                    parts[k] = b"%d%s%d" % (rng.randint(0, n), rng.choice([b"/", b"|"]), rng.randint(0, n))
                elif key == b"DS":
                    parts[k] = b",".join(b"%.2f" % rng.random() for _ in range(n))
            fields[j] = b":".join(parts)
        return True

    return _edit_one_record(data, rng, edit)


def _same_pos_other_alt(data: bytes, rng: random.Random) -> bytes:
    """Adds a record at the same position with other alleles (not a duplicate variant)."""
    lines, records = _split(data)
    if not records:
        return data
    i = rng.choice(records)
    fields = lines[i].split(b"\t")
    if len(fields) < 5:
        return data
    ref = fields[3]
    used = set(fields[4].split(b","))
    choices = [ref + b"T", ref + b"GG", ref[:1] if len(ref) > 1 else ref + b"C"] + [bytes([c]) for c in b"ACGT" if bytes([c]) != ref]
    fresh = [a for a in choices if a not in used and a != ref]
    if not fresh:
        return data
    fields[4] = rng.choice(fresh)
    if len(fields) > 9:
        keys = fields[8].split(b":")
        for j in range(9, len(fields)):
            parts = fields[j].split(b":")
            for k, key in enumerate(keys):
                if k < len(parts) and key == b"GT":
                    parts[k] = rng.choice([b"0/1", b"0/0", b"1|1", b"./."])
                elif k < len(parts) and key == b"DS":
                    parts[k] = b"%.3f" % (2 * rng.random())
            fields[j] = b":".join(parts)
    return b"\n".join(lines[: i + 1] + [b"\t".join(fields)] + lines[i + 1 :])


def _mixed_ploidy(data: bytes, rng: random.Random) -> bytes:
    """Makes some calls of a record haploid, triploid or tetraploid."""
    def values(r: random.Random, old: bytes) -> bytes:
        alleles = [a for a in old.replace(b"|", b"/").split(b"/") if a] or [b"0"]
        size = r.choice([1, 3, 4])
        picked = [r.choice(alleles + [b"."]) for _ in range(size)]
        return r.choice([b"/", b"|"]).join(picked)

    for _ in range(rng.randint(1, 4)):
        data = _on_sample_key(b"GT", values)(data, rng)
    return data


def _header_line_in_body(data: bytes, rng: random.Random) -> bytes:
    lines, records = _split(data)
    if not records:
        return data
    i = rng.choice(records)
    header = [line for line in lines if line.startswith(b"#")]
    extra = rng.choice(header + [b"##comment=in the body", b"#", b"# a comment"]) if header else b"#"
    return b"\n".join(lines[:i] + [extra] + lines[i:])


_POS_VALUES = [b"0", b"-1", b"1", b"abc", b"", b"10.5", b"1e3", b"+5", b" 7", b"0x10", b"00012", b"4999", b"5001", b"100001"]
_REF_VALUES = [b"N", b"a", b"", b".", b"ACGTACGTACGTACGTACGTACGT", b"R", b"A C", b"*", b"<DEL>"]
_ALT_VALUES = [b".", b"*", b"<DEL>", b"A,A", b"A,", b",T", b"", b"T,C,G,ACGT", b"N", b"a", b"AT]chr1:5]", b"Y"]
_GT_VALUES = [b"0/2", b"1/1/1", b".", b"0|", b"|1", b"x", b"10/1", b"", b"0/1/", b"0//1", b"-1/0", b"1", b"0/0/0/0/0", b"2|2", b"./.", b"0/1:0", b"0 /1", b"127/0", b"128/0"]
_DS_VALUES = [b"abc", b"1e40", b"-1", b".", b"", b"nan", b"inf", b"0.5,0.5", b"0.5,", b"1,2,3,4,5", b"0x1", b" 1", b"1.5e-3", b"2.0000001"]

MUTATIONS: dict[str, Mutation] = {
    "byte_flip": _byte_flip,
    "delete_line": _delete_line,
    "duplicate_line": _duplicate_line,
    "swap_lines": _swap_lines,
    "truncate": _truncate,
    "change_pos": _on_record_field(1, lambda r, old: r.choice(_POS_VALUES + [str(int(old) + r.randint(-50, 50)).encode() if old.isdigit() else b"3"])),
    "change_ref": _on_record_field(3, lambda r, old: r.choice(_REF_VALUES + [old.lower(), old + b"A"])),
    "change_alt": _on_record_field(4, lambda r, old: r.choice(_ALT_VALUES + [old + b",G", old.split(b",")[0]])),
    "change_gt": _on_sample_key(b"GT", lambda r, old: r.choice(_GT_VALUES)),
    "change_ds": _on_sample_key(b"DS", lambda r, old: r.choice(_DS_VALUES)),
    "odd_whitespace": _odd_whitespace,
    "non_ascii": _insert_bytes(["é".encode(), "\u00a0".encode(), "☃".encode(), "\u200b".encode()]),
    "non_utf8": _insert_bytes([b"\xff", b"\xe9", b"\x80\x80", b"\x00", b"\xc3"]),
    "remove_header_line": _remove_header_line,
    "huge_number": _huge_number,
    "empty_field": _empty_field,
    "extra_column": _extra_column,
    "missing_column": _missing_column,
    "format_without_gt": _format_without_gt,
    "undeclared_contig": _undeclared_contig,
    "duplicate_sample": _duplicate_sample,
    "short_sample_cell": _short_sample_cell,
    "many_alts": _many_alts,
    "same_pos_other_alt": _same_pos_other_alt,
    "mixed_ploidy": _mixed_ploidy,
    "header_line_in_body": _header_line_in_body,
}

COMPRESSED_DAMAGE = ("bgzf_truncate", "bgzf_flip", "bgzf_no_eof")


def mutate(data: bytes, rng: random.Random, *, allowed: bool = True) -> tuple[bytes, list[str]]:
    """Applies 0-3 random mutations (0 in about one case in seven, or when not ``allowed``)."""
    count = rng.choices([0, 1, 2, 3], weights=[15, 50, 25, 10])[0] if allowed else 0
    names = [rng.choice(sorted(MUTATIONS)) for _ in range(count)]
    for name in names:
        data = MUTATIONS[name](data, rng)
    return data, names


def damage_compressed(path: Path, rng: random.Random) -> str:
    """Damages a BGZF file in place (truncated, a flipped byte, no EOF block); returns what was done."""
    data = bytearray(path.read_bytes())
    kind = rng.choice(COMPRESSED_DAMAGE)
    if kind == "bgzf_truncate":
        data = data[: rng.randrange(1, max(2, len(data) - 1))]
    elif kind == "bgzf_flip":
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    else:
        data = data[:-28] if len(data) > 28 else data
    path.write_bytes(bytes(data))
    return kind


# --- input forms --------------------------------------------------------------------------


def tools_missing() -> list[str]:
    """The command-line tools the fuzzer needs that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _tool(*args: str, stdout: object = subprocess.DEVNULL) -> bool:
    try:
        result = subprocess.run(list(args), stdout=stdout, stderr=subprocess.PIPE, timeout=TOOL_TIMEOUT_S, check=False)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and b"[E::" not in result.stderr


def write_forms(data: bytes, folder: Path, forms: tuple[str, ...], rng: random.Random, *, damage: bool = True) -> dict[str, tuple[Path, list[str]]]:
    """Writes ``data`` in each form that the tools can make; returns form -> (file, extra mutations).

    Each form gets its own folder so that a form's index is the only one next to its file.
    """
    made: dict[str, tuple[Path, list[str]]] = {}
    plain = folder / "plain" / "input.vcf"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(data)
    gz = folder / "gz-base" / "input.vcf.gz"
    gz.parent.mkdir()
    with open(gz, "wb") as sink:
        has_gz = _tool("bgzip", "-c", str(plain), stdout=sink)
    bcf = folder / "bcf-base" / "input.bcf"
    bcf.parent.mkdir()
    has_bcf = any(f.startswith("bcf") for f in forms) and _tool("bcftools", "view", "--no-version", "-Ob", "-o", str(bcf), str(plain))
    for form in forms:
        target_dir = folder / form.replace("+", "-")
        extra: list[str] = []
        if form == "vcf":
            target_dir.mkdir()
            target = target_dir / "input.vcf"
            shutil.copy(plain, target)
        elif form.startswith("vcf.gz"):
            if not has_gz:
                continue
            target_dir.mkdir()
            target = target_dir / "input.vcf.gz"
            shutil.copy(gz, target)
            if form == "vcf.gz" and damage and rng.random() < 0.12:
                extra.append(damage_compressed(target, rng))
            elif form != "vcf.gz" and not _tool("tabix", "-f", *(["--csi"] if form == "vcf.gz+csi" else []), "-p", "vcf", str(target)):
                continue
        else:
            if not has_bcf:
                continue
            target_dir.mkdir()
            target = target_dir / "input.bcf"
            shutil.copy(bcf, target)
            if form == "bcf" and damage and rng.random() < 0.12:
                extra.append(damage_compressed(target, rng))
            elif form == "bcf+csi" and not _tool("bcftools", "index", "-f", "-c", str(target)):
                continue
        made[form] = (target, extra)
    return made


# --- the reference: bcftools' reading ------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One biallelic variant as both sides are compared: position, alleles, dosages, DS."""

    contig: str
    pos: int
    ref: str
    alt: str
    calls: tuple[int, ...]
    ds: tuple[float, ...]

    def key(self) -> tuple[object, ...]:
        return (self.contig, self.pos, self.ref, self.alt, self.calls, tuple("nan" if math.isnan(d) else round(d, 3) for d in self.ds))

    def __str__(self) -> str:
        ds = "" if all(math.isnan(d) for d in self.ds) else " DS=" + ",".join("." if math.isnan(d) else f"{d:g}" for d in self.ds)
        return f"{self.contig}:{self.pos} {self.ref}>{self.alt} calls={','.join(map(str, self.calls))}{ds}"


@dataclass(frozen=True)
class BcftoolsReading:
    """bcftools' records (raw, before the split) or the error it reported."""

    records: list[tuple[str, int, str, str, list[str], list[str] | None]] | None
    error: str | None
    num_samples: int = 0


def _stderr_error(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith(("[E::", "Error")) or "[main" in line or "Failed" in line or "Could not" in line:
            return line.strip()
    return None


def bcftools_reading(path: Path) -> BcftoolsReading:
    """Reads ``path`` with ``bcftools query``: CHROM, POS, REF, ALT, every sample's GT (and DS)."""
    try:
        header = subprocess.run(["bcftools", "query", "-l", str(path)], capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return BcftoolsReading(None, "bcftools query -l timed out")
    if header.returncode != 0 or b"[E::" in header.stderr:
        return BcftoolsReading(None, _stderr_error(header.stderr.decode(errors="replace")) or f"bcftools query -l exited {header.returncode}")
    num_samples = len(header.stdout.splitlines())
    result = None
    for with_ds in (True, False):
        fmt = "%CHROM\t%POS\t%REF\t%ALT" + ("[\t%GT]" if num_samples else "") + ("\t|[\t%DS]" if with_ds and num_samples else "") + "\n"
        try:
            result = subprocess.run(["bcftools", "query", "-f", fmt, str(path)], capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            return BcftoolsReading(None, "bcftools query timed out")
        stderr = result.stderr.decode(errors="replace")
        if with_ds and num_samples and result.returncode != 0 and "DS" in stderr and "[E::" not in stderr:
            continue  # no DS in the header: query GT alone
        if result.returncode != 0 or "[E::" in stderr:
            if result.returncode < 0:
                return BcftoolsReading(None, f"bcftools query crashed (signal {-result.returncode})")
            return BcftoolsReading(None, _stderr_error(stderr) or f"bcftools query exited {result.returncode}")
        break
    assert result is not None
    records = []
    for line in result.stdout.decode(errors="surrogateescape").split("\n"):
        if not line:
            continue
        if "\t|" in line:
            main, _, ds_text = line.partition("\t|")
            ds: list[str] | None = ds_text.split("\t")[1:]
        else:
            main, ds = line, None
        fields = main.split("\t")
        bad = [gt for gt in fields[4:] if not _GT_TEXT.fullmatch(gt)]
        if bad:  # for example '-65' from a BCF whose GT bytes are not a genotype
            return BcftoolsReading(None, f"bcftools prints GT {bad[0][:20]!r} at {fields[0]}:{fields[1]}, which is not a genotype")
        records.append((fields[0], int(fields[1]), fields[2], fields[3], fields[4:], ds))
    return BcftoolsReading(records, None, num_samples)


_ACGTN = frozenset("ACGTN")
_GT_TEXT = re.compile(r"[|/]?(?:\.|\d+)(?:[|/](?:\.|\d+))*")


def _symbolic(allele: str) -> bool:
    return not allele or not set(allele) <= _ACGTN


def naive_contig(name: str, style: str) -> str:
    """Contig renaming of the ``chr``/``keep`` styles, written from their documentation."""
    if style == "keep":
        return name
    bare = name[3:] if name.lower().startswith("chr") and len(name) > 3 else name
    if bare.upper() in ("M", "MT"):
        return "chrM"
    return "chr" + bare


def _parse_gt(text: str) -> list[int | None]:
    if text in ("", "."):
        return [None]
    return [None if a == "." else int(a) for a in text.replace("|", "/").split("/")]


def naive_harmonize(reading: BcftoolsReading, contig_style: str) -> list[Call]:
    """bcftools' records split per ALT (norm -m- semantics), trimmed, dropped as documented."""
    out: list[Call] = []
    assert reading.records is not None
    for contig, pos, ref, alt_text, gts, ds_cells in reading.records:
        alts = [] if alt_text == "." else alt_text.split(",")
        ref = ref.upper()
        if not alts or _symbolic(ref):
            continue
        parsed = [_parse_gt(gt) for gt in gts]
        for k, alt in enumerate(alts, start=1):
            alt = alt.upper()
            if _symbolic(alt) or alt == ref:
                continue
            new_ref, new_alt, new_pos = naive_trim(ref, alt, pos) if (len(ref) > 1 or len(alt) > 1) else (ref, alt, pos)
            calls = []
            ds = []
            for j, alleles in enumerate(parsed):
                haploid = len(alleles) == 1
                if any(a is None for a in alleles):
                    calls.append(-1)
                else:
                    count = sum(1 for a in alleles if a == k)
                    calls.append(2 * count if haploid else count)
                value = math.nan
                if ds_cells is not None and j < len(ds_cells):
                    numbers = ds_cells[j].split(",")
                    if k - 1 < len(numbers) and numbers[k - 1] not in (".", ""):
                        value = float(numbers[k - 1])
                        if haploid and alleles[0] is not None:
                            value *= 2
                ds.append(value)
            out.append(Call(naive_contig(contig, contig_style), new_pos, new_ref, new_alt, tuple(calls), tuple(ds)))
    return out


_KEPT_META = (b"##fileformat", b"##contig")


def sanitize(data: bytes) -> bytes:
    """The file with QUAL, FILTER, INFO set to '.', FORMAT reduced to GT and DS (columns genofed ignores).

    Meta lines other than ``##fileformat`` and ``##contig`` are removed (htslib reports an
    unparsable ``##INFO`` line as an error; undeclared, GT and DS are still read, as
    strings). An empty sample column or GT becomes '.' (htslib 1.16 prints its GT as ``-65``).

    A GT's leading phase mark (VCF 4.4 ``|1``, which genofed reads and htslib 1.16 refuses)
    is removed too, and so is a line starting with '#' after the ``#CHROM`` header: a
    comment, as tabix's VCF preset reads it (htslib's streaming reader takes it for a
    record on a contig named after it, and bcftools crashes on it).
    """
    lines = [line for line in data.split(b"\n") if not line.startswith(b"##") or line.startswith(_KEPT_META)]
    header = next((i for i, line in enumerate(lines) if line.startswith(b"#CHROM")), len(lines))
    # After the header a '#' line is a comment, as tabix's VCF preset reads it (genofed does too).
    lines = lines[:header + 1] + [line for line in lines[header + 1:] if not line.startswith(b"#")]
    for i, line in enumerate(lines):
        if not line or line.startswith(b"#"):
            continue
        fields = line.split(b"\t")
        if len(fields) >= 8:
            fields[5:8] = [b".", b".", b"."]
        if len(fields) > 9:
            keys = fields[8].split(b":")
            keep = [n for n, key in enumerate(keys) if key in (b"GT", b"DS")]
            fields[8] = b":".join(keys[n] for n in keep) or b"GT"
            gt = keys.index(b"GT") if b"GT" in keys else -1
            cells = []
            for cell in fields[9:]:
                parts = cell.split(b":")
                if 0 <= gt < len(parts) and parts[gt][:1] in (b"/", b"|"):
                    parts[gt] = parts[gt][1:]  # VCF 4.4 leading phase ('|1'): genofed reads it, htslib 1.16 does not
                if 0 <= gt < len(parts) and parts[gt] == b"":
                    parts[gt] = b"."  # htslib 1.16 stores an empty GT as allele -65, without an error
                cells.append(b":".join(parts[n] if n < len(parts) else b"." for n in keep) or b".")
            fields[9:] = cells
        lines[i] = b"\t".join(fields)
    return b"\n".join(lines)


# --- genofed's side -------------------------------------------------------------------------


class _TimeLimit(BaseException):
    """Raised by SIGALRM inside ingest (a BaseException so no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises :class:`_TimeLimit` after ``seconds`` (main thread only; elsewhere no limit)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def genofed_calls(out: Path) -> list[Call]:
    """The calls of an ingested dataset, read back with ``open_dataset``."""
    import numpy as np

    from pipeline.dataset import open_dataset

    dataset = open_dataset(out)
    calls: list[Call] = []
    for block in dataset.iter_blocks(with_dosage=True):
        table = block.variants
        contigs = table.column("chromosome").to_pylist()
        positions = table.column("base_pair_location").to_pylist()
        refs = table.column("ref").to_pylist()
        alts = table.column("alt").to_pylist()
        for i in range(table.num_rows):
            ds = block.dosage[i].tolist() if block.dosage is not None else [math.nan] * dataset.num_samples
            calls.append(Call(contigs[i], int(positions[i]), refs[i], alts[i], tuple(int(c) for c in np.asarray(block.call_dosage[i])), tuple(float(d) for d in ds)))
    return calls


def _calls_equal(a: Call, b: Call) -> bool:
    if (a.contig, a.pos, a.ref, a.alt, a.calls) != (b.contig, b.pos, b.ref, b.alt, b.calls) or len(a.ds) != len(b.ds):
        return False
    for x, y in zip(a.ds, b.ds):
        if math.isnan(x) and math.isnan(y):
            continue
        if math.isinf(x) or math.isinf(y):
            if not (x == y or (math.isinf(x) and abs(y) > 3.4e38) or (math.isinf(y) and abs(x) > 3.4e38)):
                return False
            continue
        if not math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6):
            return False
    return True


def first_difference(ours: list[Call], theirs: list[Call]) -> str | None:
    """None when both sides hold the same variants and calls; else the first difference, in words."""
    a = sorted(ours, key=Call.key)
    b = sorted(theirs, key=Call.key)
    for x, y in zip(a, b):
        if not _calls_equal(x, y):
            return f"genofed {x} | bcftools {y}"
    if len(a) != len(b):
        extra = a[len(b)] if len(a) > len(b) else b[len(a)]
        side = "genofed only" if len(a) > len(b) else "bcftools only"
        return f"{len(a)} genofed variants vs {len(b)} bcftools variants; first {side}: {extra}"
    return None


# --- cases and the run ------------------------------------------------------------------------


@dataclass
class Outcome:
    """One tried input: its description and what happened."""

    case: int
    seed: int
    base: str
    form: str
    mutations: list[str]
    chunk_size: str | int
    contig_style: str
    path: Path
    kind: str = ""
    detail: str = ""
    note: str = ""

    def describe(self) -> str:
        muts = "+".join(self.mutations) or "none"
        return f"[{self.kind}] case {self.case} seed {self.seed} form {self.form} base {self.base} mutations {muts} chunk {self.chunk_size} contigs {self.contig_style}: {self.detail}"

    def signature(self) -> str:
        """The failure with paths, numbers and quoted values blanked, to group alike failures."""
        text = re.sub(r"/\S*/input\.(vcf\.gz|vcf|bcf)\S*", "FILE", self.detail)
        text = re.sub(r"'[^']*'|\"[^\"]*\"|b'[^']*'", "'…'", text)
        text = re.sub(r"genofed .*? \| bcftools .*", "genofed calls differ from bcftools calls", text)
        text = re.sub(r"\d+", "N", text)
        return f"{self.kind}: {text[:160]}"

    def command(self, path: Path | None = None) -> str:
        chunk = "" if self.chunk_size == "default" else f" --chunk-size {self.chunk_size}"
        return f"genofed ingest --vcf {path or self.path} --out OUT --scheduler synchronous --contig-style {self.contig_style}{chunk}"


@dataclass
class Report:
    """The tally per form and every outcome."""

    seed: int
    outcomes: list[Outcome] = field(default_factory=list)
    keep: Path | None = None
    seconds: float = 0.0

    def tally(self) -> dict[str, dict[str, int]]:
        table = {form: {"tried": 0, **{k: 0 for k in KINDS}} for form in FORMS}
        for o in self.outcomes:
            table[o.form]["tried"] += 1
            table[o.form][o.kind] += 1
        table["all"] = {key: sum(row[key] for row in table.values()) for key in ("tried", *KINDS)}
        return table

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind in FAILURE_KINDS]

    def tally_text(self) -> str:
        header = f"{'form':<11}" + "".join(f"{k:>12}" for k in ("tried", *KINDS))
        rows = [header] + [f"{form:<11}" + "".join(f"{row[k]:>12}" for k in ("tried", *KINDS)) for form, row in self.tally().items()]
        return "\n".join(rows)

    def text(self, max_failures: int = 200, max_notes: int = 10) -> str:
        parts = [f"vcf fuzz: seed {self.seed}, {len(self.outcomes)} inputs tried in {self.seconds:.1f} s", self.tally_text()]
        failures = self.failures
        if failures:
            parts.append(f"{len(failures)} failing inputs" + (f", saved under {self.keep} (see failures.txt there)" if self.keep else "") + ":")
            parts += [f"  {o.describe()}" for o in failures[:max_failures]]
            if len(failures) > max_failures:
                parts.append(f"  ... and {len(failures) - max_failures} more")
        if failures:
            groups: dict[str, list[Outcome]] = {}
            for o in failures:
                groups.setdefault(o.signature(), []).append(o)
            parts.append(f"{len(groups)} distinct failure kinds (count, forms, first case):")
            for signature, members in sorted(groups.items(), key=lambda item: -len(item[1])):
                forms = sorted({o.form for o in members}, key=FORMS.index)
                first = members[0]
                parts.append(f"  {len(members):4d}  {signature}  [{', '.join(forms)}]  e.g. case {first.case} seed {first.seed} {first.form} {'+'.join(first.mutations) or 'none'}")
        noted = [o for o in self.outcomes if o.note]
        if noted:
            parts.append(f"{len(noted)} notes (not failures; the first {min(len(noted), max_notes)}):")
            parts += [f"  {o.describe()} -- {o.note}" for o in noted[:max_notes]]
        return "\n".join(parts)


def _choose_base(rng: random.Random, htslib_files: list[Path]) -> tuple[str, bytes]:
    if htslib_files and rng.random() < 0.15:
        path = rng.choice(htslib_files)
        return f"htslib:{path.relative_to(HTSLIB_TEST_DIR)}", path.read_bytes()
    return "generated", generate_vcf(rng)


def run_case(case: int, case_seed: int, folder: Path, forms: tuple[str, ...], htslib_files: list[Path], limit_s: float, *, fuzz: bool = True) -> list[Outcome]:
    """Makes one fuzzed input (unmutated unless ``fuzz``), writes its forms into ``folder`` and tries each."""
    rng = random.Random(case_seed)
    base, data = _choose_base(rng, htslib_files)
    data, mutations = mutate(data, rng, allowed=fuzz)
    if base == "generated":
        chunk_size: str | int = rng.choice(["1kb", "1kb", "100", "default", "default"])
    else:  # real contig lengths (up to 2^31): tiny chunks would plan millions of regions
        chunk_size = rng.choice(["1Mb", "default"])
    contig_style = "chr" if rng.random() < 0.25 else "keep"
    made = write_forms(data, folder, forms, rng, damage=fuzz)
    outcomes = []
    for form, (path, extra) in made.items():
        outcome = Outcome(case, case_seed, base, form, mutations + extra, chunk_size, contig_style, path)
        try_input(outcome, data if not extra else None, folder / f"out-{form.replace('+', '-')}", limit_s)
        outcomes.append(outcome)
    return outcomes


def try_input(outcome: Outcome, text: bytes | None, out_parent: Path, limit_s: float) -> None:
    """Ingests ``outcome.path`` in process and classifies the result against bcftools."""
    from pipeline.errors import GenofedError
    from pipeline.ingest import ingest

    out_parent.mkdir()
    out = out_parent / "dataset"
    kwargs: dict[str, object] = {"out": out, "scheduler": "synchronous", "contig_style": outcome.contig_style}
    if outcome.chunk_size != "default":
        kwargs["chunk_size"] = outcome.chunk_size
    started = time.perf_counter()
    try:
        with time_limit(limit_s):
            ingest(outcome.path, **kwargs)  # type: ignore[arg-type]
    except _TimeLimit:
        outcome.kind, outcome.detail = "hang", f"ingest still running after {limit_s:g} s"
        return
    except GenofedError as error:
        message = str(error)
        problems = []
        if "\n" in message:
            problems.append("message has several lines")
        if str(outcome.path) not in message and outcome.path.name not in message:
            problems.append("message does not name the input file")
        left = sorted(p.name for p in out_parent.iterdir())
        if left:
            problems.append(f"left behind in the output folder's parent: {left}")
        first_line = message.splitlines()[0] if message else ""
        if problems:
            outcome.kind, outcome.detail = "bad_refusal", f"{type(error).__name__}: {'; '.join(problems)}: {first_line[:300]}"
            return
        outcome.kind, outcome.detail = "refused", f"{type(error).__name__}: {first_line[:300]}"
        reading = bcftools_reading(outcome.path)
        if reading.error is None:
            outcome.note = "refused, bcftools reads it"
        return
    except Exception as error:  # noqa: BLE001 - classifying is the point
        frames = traceback.extract_tb(error.__traceback__)
        inside = [f for f in frames if "/pipeline/" in f.filename] or frames
        where = f" at {Path(inside[-1].filename).name}:{inside[-1].lineno} ({inside[-1].name})" if inside else ""
        outcome.kind, outcome.detail = "traceback", f"{type(error).__name__}{where}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        return
    finally:
        elapsed = time.perf_counter() - started
        if elapsed > limit_s / 2 and outcome.kind not in ("hang",):
            outcome.note = (outcome.note + "; " if outcome.note else "") + f"slow: {elapsed:.1f} s"
    try:
        ours = genofed_calls(out)
    except Exception as error:  # noqa: BLE001
        outcome.kind, outcome.detail = "traceback", f"reading the dataset back: {type(error).__name__}: {error}"
        return
    reading = bcftools_reading(outcome.path)
    lenient = ""
    if reading.error is not None and text is not None:
        sanitized = out_parent / ("sanitized.vcf")
        sanitized.write_bytes(sanitize(text))
        retry = bcftools_reading(sanitized)
        if retry.error is None:
            lenient = f"bcftools refused the file ({reading.error[:150]}) but reads the sanitized text and agrees (see decision 4)"
            reading = retry
    if reading.error is not None:
        outcome.kind, outcome.detail = "disagree", f"genofed accepted ({len(ours)} variants) what bcftools refuses: {reading.error[:300]}"
        return
    try:
        theirs = naive_harmonize(reading, outcome.contig_style)
    except ValueError as error:  # a DS bcftools prints as a string (undeclared in a sanitized file)
        outcome.kind, outcome.detail = "disagree", f"genofed accepted ({len(ours)} variants) a value bcftools reads as text: {error}"
        return
    difference = first_difference(ours, theirs)
    if difference is None:
        outcome.kind = "equal"
        if lenient:
            outcome.note = lenient
    else:
        outcome.kind, outcome.detail = "disagree", difference[:400]
    shutil.rmtree(out, ignore_errors=True)


def run_fuzz(
    seed: int,
    count: int,
    *,
    keep: Path | None = None,
    forms: tuple[str, ...] = FORMS,
    limit_s: float = 5.0,
    use_htslib: bool = True,
    fuzz: bool = True,
    case_seeds: list[int] | None = None,
) -> Report:
    """Runs ``count`` fuzzed inputs (each in every form the tools can make) from ``seed``.

    ``case_seeds`` runs exactly those cases instead (the ``seed`` a failure report names).

    Failing inputs (with their indexes) are copied into ``keep``, one folder per case and
    form, and listed with a command to reproduce each in ``keep/failures.txt``.
    """
    master = random.Random(seed)
    htslib_files = htslib_seed_files() if use_htslib else []
    report = Report(seed=seed, keep=keep)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="genofed-vcf-fuzz-") as scratch:
        seeds = [master.randrange(1 << 31) for _ in range(count)] if case_seeds is None else list(case_seeds)
        for case, case_seed in enumerate(seeds):
            folder = Path(scratch) / f"case-{case:05d}"
            folder.mkdir()
            outcomes = run_case(case, case_seed, folder, forms, htslib_files, limit_s, fuzz=fuzz)
            report.outcomes += outcomes
            if keep is not None:
                for o in outcomes:
                    if o.kind in FAILURE_KINDS:
                        _keep_failure(o, keep)
            shutil.rmtree(folder, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    if keep is not None and report.failures:
        lines = [f"# {o.describe()}\n{o.command()}\n" for o in report.failures]
        (keep / "failures.txt").write_text("\n".join(lines))
    return report


def _keep_failure(outcome: Outcome, keep: Path) -> None:
    target = keep / f"case-{outcome.case:05d}-seed-{outcome.seed}" / outcome.form.replace("+", "-")
    target.mkdir(parents=True, exist_ok=True)
    for file in outcome.path.parent.iterdir():
        if file.is_file():
            shutil.copy(file, target / file.name)
    kept = target / outcome.path.name
    outcome.detail = outcome.detail.replace(str(outcome.path), str(kept))
    outcome.path = kept


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.io.vcf_fuzz_support --seed 1 --count 300 --keep DIR``: exit 1 on any failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=100, help="fuzzed inputs (each tried in every form)")
    parser.add_argument("--keep", type=Path, default=None, help="folder to copy failing inputs into")
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated subset of {','.join(FORMS)}")
    parser.add_argument("--limit", type=float, default=5.0, help="seconds per ingest before it counts as a hang")
    parser.add_argument("--no-htslib", action="store_true", help="do not use htslib's test VCFs as bases")
    parser.add_argument("--case-seed", type=int, action="append", default=None, help="run only the case with this seed (repeatable)")
    args = parser.parse_args(argv)
    missing = tools_missing()
    if missing:
        print(f"missing tools: {', '.join(missing)}; install bcftools and tabix", file=sys.stderr)
        return 2
    forms = tuple(f for f in args.forms.split(",") if f)
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        print(f"unknown forms {unknown}; choose from {', '.join(FORMS)}", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run_fuzz(args.seed, args.count, keep=args.keep, forms=forms, limit_s=args.limit, use_htslib=not args.no_htslib, case_seeds=args.case_seed)
    print(report.text(max_failures=10_000))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
