"""Sample and variant selection of a job, as plink2's ``--keep``/``--remove``/``--keep-if``/``--extract``/``--exclude``/``--chr``/``--from-bp``/``--to-bp``.

Spec keys (:data:`SELECTION_PARAMS`)::

    keep: eur_unrelated            # a sample list each site defines itself ([sample_lists] in site.toml)
    remove: withdrawn              # another one; its samples are left out
    samples: "sex == 2 and age >= 40"   # an expression on the samples table (:mod:`.sample_filter`)
    regions: ["chr22:16000000-17000000", "21"]   # 1-based, inclusive; "chr22" and "22" alike
    extract: ["chr22:16050075:A:G"]              # only these variants (genofed keys)
    exclude: ["chr22:16050115:G:T"]              # never these

The analyst names sample lists, never sends a path or an ID: each site resolves a name
to its own file of IIDs (one per line, or plink's ``FID IID`` columns; ``#`` lines are
comments), and a site that defines no list of that name declines the job at its
pre-flight (``unknown-sample-list``). A sample is selected when it is in ``keep`` (if
given), satisfies ``samples`` (if given) and is not in ``remove``; a variant when it
lies in a region (if any), is in ``extract`` (if given) and not in ``exclude``.

The selection is applied by handing the analysis a view of the site's dataset
(:func:`selected_dataset`): the view's samples table, sample count, variants and
genotype blocks hold the selection only, so every phase of a job (census QC, PCA,
regression) and its contributing sets (:meth:`~pipeline.analyses.Analysis.contributions`,
which the site's ledger checks) see the same samples and variants, as plink2's
filters apply before everything else.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.analyses import sample_filter
from pipeline.analyses.protocol import SiteContext
from pipeline.dataset import Block, Dataset
from pipeline.errors import InputError, PolicyRefusal
from pipeline.harmonize.contigs import canonical_contig
from pipeline.parameters import Param, optional, parse_params

__all__ = ["SELECTION_PARAMS", "Region", "SelectedDataset", "Selection", "read_sample_list",
           "sample_mask", "selected_dataset", "variant_mask"]

_LIST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REGION = re.compile(r"(?P<contig>[A-Za-z0-9_.]+)(?::(?P<start>[\d,]+)-(?P<end>[\d,]+))?")
_VARIANT = re.compile(r"(?P<contig>[A-Za-z0-9_.]+):(?P<rest>[1-9]\d*:[^:\s]+:[^:\s]+)")


@dataclass(frozen=True)
class Region:
    """A contig, or a 1-based inclusive range of it (plink2's ``--chr`` with ``--from-bp``/``--to-bp``)."""

    contig: str
    start: int = 1
    end: int | None = None

    @classmethod
    def parse(cls, text: Any) -> Region:
        match = _REGION.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError("a list of regions, each CONTIG or CONTIG:START-END (e.g. \"chr22:16000000-17000000\")")
        contig = canonical_contig(match["contig"], "nochr")
        if match["start"] is None:
            return cls(contig)
        start, end = (int(match[key].replace(",", "")) for key in ("start", "end"))
        if not 1 <= start <= end:
            raise ValueError(f"a list of regions with 1 <= START <= END (1-based, inclusive); {text!r} is not")
        return cls(contig, start, end)

    def __str__(self) -> str:
        return self.contig if self.end is None else f"{self.contig}:{self.start}-{self.end}"


def _list_name(value: Any) -> str:
    if not isinstance(value, str) or not _LIST_NAME.fullmatch(value):
        raise ValueError("the name of a sample list the sites define (letters, digits, '_', '.', '-'), never a path")
    return value


def _expression(value: Any) -> str:
    try:
        sample_filter.parse(value)
    except sample_filter.FilterSyntaxError as error:
        raise ValueError(f"an expression over the samples table ({error})") from None
    return str(value)


def _regions(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("a list of regions, each CONTIG or CONTIG:START-END (e.g. \"chr22:16000000-17000000\")")
    return [str(Region.parse(item)) for item in value]


def _variant_key(value: Any) -> str:
    match = _VARIANT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"a list of variant IDs CONTIG:POS:REF:ALT (e.g. \"chr22:16050075:A:G\"); {value!r} is not one")
    return f"{canonical_contig(match['contig'], 'nochr')}:{match['rest']}"


def _variant_keys(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("a list of variant IDs CONTIG:POS:REF:ALT (e.g. \"chr22:16050075:A:G\")")
    return sorted({_variant_key(item) for item in value})


SELECTION_PARAMS = {
    "keep": Param(None, optional(_list_name)),
    "remove": Param(None, optional(_list_name)),
    "samples": Param(None, optional(_expression)),
    "regions": Param([], _regions),
    "extract": Param(None, optional(_variant_keys)),
    "exclude": Param([], _variant_keys),
}
"""The selection's spec keys, defaults and checks (an analysis adds them to its own ``PARAMS``)."""


@dataclass(frozen=True)
class Selection:
    """A job's checked selection (see the module docstring); variant keys and regions in ``chr``-less form."""

    keep: str | None = None
    remove: str | None = None
    samples: str | None = None
    regions: tuple[Region, ...] = ()
    extract: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, where: str = "gwas") -> Selection:
        """The selection keys of a job spec (other keys are the analysis' own).

        Raises:
            ConfigurationError: naming the key and what was expected (a syntax error's position).
        """
        values = parse_params({k: v for k, v in spec.items() if k in SELECTION_PARAMS}, SELECTION_PARAMS, where=where)
        extract = values["extract"]
        return cls(values["keep"], values["remove"], values["samples"], tuple(Region.parse(r) for r in values["regions"]),
                   None if extract is None else frozenset(extract), frozenset(values["exclude"]))

    @property
    def selects_samples(self) -> bool:
        return (self.keep, self.remove, self.samples) != (None, None, None)

    @property
    def selects_variants(self) -> bool:
        return bool(self.regions) or self.extract is not None or bool(self.exclude)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the selection: what a view's cache keys carry."""
        text = json.dumps([self.keep, self.remove, self.samples, [str(r) for r in self.regions],
                           None if self.extract is None else sorted(self.extract), sorted(self.exclude)])
        return hashlib.sha256(text.encode()).hexdigest()


def read_sample_list(path: Path) -> frozenset[str]:
    """The IIDs of a plink-style sample file: one per line, or ``FID IID ...`` (the second column); ``#`` lines skipped.

    Raises:
        InputError: the file cannot be read (the path stays in the site's log).
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"sample list {path}: cannot be read ({error})") from None
    fields = (line.split() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    return frozenset(parts[0] if len(parts) == 1 else parts[1] for parts in fields)


def _listed(name: str, site: SiteContext) -> frozenset[str]:
    path = site.sample_lists.get(name)
    if path is None:
        raise PolicyRefusal(f"site {site.name}: the job names sample list {name!r}, which [sample_lists] does not define "
                            f"(defined: {sorted(site.sample_lists)})", code="unknown-sample-list",
                            public=f"the sample list {name!r} is not defined at the site")
    return read_sample_list(path)


def sample_mask(selection: Selection, samples: pa.Table, site: SiteContext, *, where: str = "samples table") -> np.ndarray:
    """(rows,) bool: the samples the selection keeps, from the samples table and the site's own lists.

    Raises:
        PolicyRefusal: (``unknown-sample-list``) the site defines no list of a name the job gives.
        SpecMismatch: the expression names a column the table lacks, or compares it with the other type.
        InputError: a list's file cannot be read.
    """
    ids = samples.column("sample_id").cast(pa.string())
    mask = np.ones(samples.num_rows, bool)
    for name, wanted in ((selection.keep, True), (selection.remove, False)):
        if name is not None:
            listed = pa.array(sorted(_listed(name, site)), pa.string())
            mask &= np.asarray(pc.is_in(ids, value_set=listed).to_numpy(zero_copy_only=False), bool) == wanted
    if selection.samples is not None:
        mask &= sample_filter.evaluate(sample_filter.parse(selection.samples), samples, where=where)
    return mask


def variant_mask(selection: Selection, variants: pa.Table) -> np.ndarray:
    """(rows,) bool: the variants of a variants table the selection keeps (the one variant filter of a job)."""
    keep = np.ones(variants.num_rows, bool)
    if not selection.selects_variants or not variants.num_rows:
        return keep
    # one name per chunk in practice: canonicalize each distinct contig once, not once per variant
    names, codes = np.unique(np.asarray(variants.column("chromosome").to_pylist(), dtype=object), return_inverse=True)
    contigs = np.asarray([canonical_contig(name, "nochr") for name in names], dtype=object)[codes]
    if selection.regions:
        positions = np.asarray(variants.column("base_pair_location").to_numpy(zero_copy_only=False), np.int64)
        inside = np.zeros(variants.num_rows, bool)
        for region in selection.regions:
            end = np.iinfo(np.int64).max if region.end is None else region.end
            inside |= (contigs == region.contig) & (positions >= region.start) & (positions <= end)
        keep &= inside
    if selection.extract is not None or selection.exclude:
        ids = variants.column("variant_id").to_pylist()
        keys = np.asarray([f"{c}:{v.split(':', 1)[1]}" for c, v in zip(contigs, ids)], dtype=object)
        if selection.extract is not None:
            keep &= np.isin(keys, list(selection.extract))
        if selection.exclude:
            keep &= ~np.isin(keys, list(selection.exclude))
    return keep


def _take(values: np.ndarray | None, rows: np.ndarray, columns: np.ndarray) -> np.ndarray | None:
    if values is None:
        return None
    if not rows.all():
        values = values[rows]
    return values if columns.all() else np.compress(columns, values, axis=1)


class SelectedDataset(Dataset):
    """A dataset seen through a selection: its samples table, counts, variants and blocks hold the selection only.

    Reads the base dataset's files; a chunk none of whose variants is selected is not read
    at all (its block is empty).
    """

    def __init__(self, base: Dataset, samples: np.ndarray, selection: Selection) -> None:
        self.base = base
        self.path = base.path
        self.selection = selection
        self.keep = np.asarray(samples, bool)
        self.view = selection.digest
        self.metadata = {**base.metadata, "num_samples": int(self.keep.sum())}

    @functools.cached_property
    def num_variants(self) -> int:  # type: ignore[override]
        """The selected variants (read from the variants tables, no genotype)."""
        return sum(self.variants(name).num_rows for name in self.chunk_names)

    def samples(self) -> pa.Table:
        table = self.base.samples().filter(pa.array(self.keep))
        if "sample_index" in table.column_names:
            index = table.schema.get_field_index("sample_index")
            table = table.set_column(index, table.schema.field(index), pa.array(np.arange(table.num_rows, dtype=np.int32)))
        return table

    def _chunk(self, chunk: str) -> tuple[pa.Table, np.ndarray]:
        table = self.base.variants(chunk)
        return table, variant_mask(self.selection, table)

    def variants(self, chunk: str | None = None) -> pa.Table:
        if chunk is None:
            return super().variants()
        table, rows = self._chunk(chunk)
        return table if rows.all() else table.filter(pa.array(rows))

    def read_block(self, chunk: str, *, with_dosage: bool = False) -> Block:
        table, rows = self._chunk(chunk)
        if not rows.any():
            return Block(table.filter(pa.array(rows)), np.zeros((0, self.num_samples), np.int8), None)
        block = self.base.read_block(chunk, with_dosage=with_dosage)
        calls = _take(block.call_dosage, rows, self.keep)
        assert calls is not None
        return Block(block.variants.filter(pa.array(rows)), calls, _take(block.dosage, rows, self.keep))


def selected_dataset(dataset: Dataset, selection: Selection, site: SiteContext) -> Dataset:
    """The site's dataset as a job's selection sees it (the dataset itself when the job selects nothing).

    Kept in the job's cache, so every round sees one view (its lists and samples table read once).

    Raises:
        PolicyRefusal, SpecMismatch, InputError: as :func:`sample_mask`.
    """
    if not (selection.selects_samples or selection.selects_variants):
        return dataset

    def view() -> SelectedDataset:
        samples = dataset.samples()
        keep = (sample_mask(selection, samples, site, where=f"{dataset.path}/samples.parquet")
                if selection.selects_samples else np.ones(samples.num_rows, bool))
        return SelectedDataset(dataset, keep, selection)

    return site.cache.get(("selection.view", str(Path(dataset.path).resolve()), dataset.view, selection.digest), view)
