"""The package's exceptions: one base, specific errors named for what failed.

Every message says which file, which record (``contig:pos`` or line) and what was
expected, and how to fix it. Messages never contain genotypes or another site's
sample IDs. The CLI turns any :class:`GenofedError` into one line on stderr and
exit code 1.
"""

from __future__ import annotations

import errno
import sqlite3


class GenofedError(Exception):
    """Base class of every error genofed raises on purpose."""


class InputError(GenofedError):
    """An input file is missing, unreadable or malformed."""


class VcfFormatError(InputError):
    """A VCF/BCF file violates the format (header, record, genotype)."""


class PhenotypeError(InputError):
    """The phenotype table is malformed (duplicate IDs, non-numeric values...)."""


class SpecMismatch(PhenotypeError):
    """A site's samples table does not fit a job's spec: a column it names is missing, not numeric, or miscoded.

    The message is the detail for the site's own log (it may list the site's columns);
    ``public`` names only the analyst's own spec column and what it lacks, which is all a
    site's ``spec-mismatch`` refusal tells the analyst.
    """

    def __init__(self, detail: str, *, public: str) -> None:
        super().__init__(detail)
        self.public = public


class FastaError(InputError):
    """The reference FASTA is missing a contig or disagrees with the data."""


class SchemaError(GenofedError):
    """A table does not match its declared Arrow schema in ``schemas/``."""


class OutputExistsError(GenofedError):
    """The output path exists and ``--force`` was not given."""


class ConfigurationError(GenofedError):
    """Parameters are inconsistent (for example a ring too small for the sum)."""


class ProtocolError(GenofedError):
    """A secure-aggregation message arrived for the wrong stage, round or sender."""


class AggregationAborted(GenofedError):
    """Too few sites survived to recover the sum; nothing was revealed."""


class IdentityError(GenofedError):
    """A peer certificate does not name an enrolled participant of this federation."""


class AuditError(GenofedError):
    """The audit log is broken (edited, reordered, truncated) or cannot be appended to."""


REFUSAL_CODES = {
    "policy": "the site's policy does not allow this job",
    "too-few-samples": "fewer of the site's samples would contribute than its policy's minimum",
    "set-too-close": "the samples that would contribute differ from those of an earlier release by too few",
    "one-site-difference": "the release would differ by exactly one site from a comparable earlier release",
    "budget-exhausted": "the site's privacy budget is spent",
    "data-error": "the site could not compute its contribution from its data",
    "spec-mismatch": "a column the job's spec names is missing at the site, not numeric, or coded otherwise than the job needs",
    "unknown-sample-list": "the job names a sample list the site does not define",
}
"""What an analyst may learn of a site's refusal: a coarse code and its meaning (never a site's value, count or path)."""


class PolicyRefusal(GenofedError):
    """A site's policy forbids contributing to a job (analysis not allowed, too few samples...).

    The message (``str(refusal)``) is the detail, which stays in the site's own log.
    ``code`` (one of :data:`REFUSAL_CODES`) and ``public`` are all that reaches the
    coordinator and the analyst: ``public`` may name the analyst's own spec keys and
    column names, never a value, count or path of the site's (it defaults to the code's
    meaning).
    """

    def __init__(self, detail: str, *, code: str = "policy", public: str | None = None) -> None:
        super().__init__(detail)
        if code not in REFUSAL_CODES:
            raise ValueError(f"unknown refusal code {code!r}; expected one of {sorted(REFUSAL_CODES)}")
        self.code = code
        self.public = public if public is not None else REFUSAL_CODES[code]

    def for_analyst(self) -> str:
        """The refusal as the coordinator and the analyst see it: ``code: public``."""
        return f"{self.code}: {self.public}"


class StoreCorruption(ProtocolError):
    """A stored body does not match its recorded digest (the database or a body file was damaged or altered).

    A :class:`ProtocolError`, so that what already stops a job on a bad message stops it here too.
    """


class MessageConflict(ProtocolError):
    """A message for another job, round or stage than the one in progress, or a replay with other content."""


class NotFoundError(GenofedError):
    """A job, round or result that the coordinator does not know."""


class JobPruned(GenofedError):
    """A job's results and contributions were removed by the coordinator's retention policy; only its record is left."""


class DiskFull(GenofedError):
    """A write failed because the disk (or quota) under a genofed folder is full; the step can be retried once space is freed."""


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` says a disk (or quota) is full: a file write's ENOSPC/EDQUOT, or SQLite's "disk is full"."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "disk is full" in str(error)
