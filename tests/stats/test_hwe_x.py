"""The chrX Hardy-Weinberg exact test against plink2, the autosomal test and brute force."""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from pipeline.stats.hwe import hwe_exact_p
from pipeline.stats.hwe_x import hwe_x_exact_p


def naive_hwe_x_exact(f_ref: int, f_het: int, f_alt: int, m_ref: int, m_alt: int) -> float:
    """Exact chrX HWE p-value by enumerating every table with exact rational weights.

    Given nm males, nf females and A1 copies of the ref allele, a table is (m1 = male ref
    count, h = female hets); with f1 = A1 - m1 female ref copies, f11 = (f1 - h) / 2 and
    f22 = nf - h - f11 female homozygotes, its probability is proportional to
    2^h / (m1! (nm - m1)! f11! h! f22!) (Graffelman & Weir 2016). The p-value sums the
    tables no more probable than the observed one.
    """
    nf, nm = f_ref + f_het + f_alt, m_ref + m_alt
    if nf + nm == 0:
        return math.nan
    a1 = 2 * f_ref + f_het + m_ref
    fact = math.factorial

    def weight(m1: int, h: int) -> Fraction:
        f11 = (a1 - m1 - h) // 2
        return Fraction(2**h, fact(m1) * fact(nm - m1) * fact(f11) * fact(h) * fact(nf - h - f11))

    weights = [
        weight(m1, h)
        for m1 in range(nm + 1)
        if 0 <= a1 - m1 <= 2 * nf
        for h in range((a1 - m1) % 2, min(a1 - m1, 2 * nf - a1 + m1) + 1, 2)
    ]
    observed = weight(m_ref, f_het)
    return float(sum(w for w in weights if w <= observed) / sum(weights))


def log_space_hwe_x_exact(f_ref: int, f_het: int, f_alt: int, m_ref: int, m_alt: int) -> float:
    """The same enumeration in log space (every table, no window), for hundreds of samples."""
    nf, nm = f_ref + f_het + f_alt, m_ref + m_alt
    a1 = 2 * f_ref + f_het + m_ref

    def log_weight(m1: int, h: np.ndarray | int) -> np.ndarray:
        f11 = (a1 - m1 - h) / 2
        return h * np.log(2) - gammaln(m1 + 1) - gammaln(nm - m1 + 1) - gammaln(f11 + 1) - gammaln(h + 1) - gammaln(nf - h - f11 + 1)

    rows = [
        log_weight(m1, np.arange((a1 - m1) % 2, min(a1 - m1, 2 * nf - a1 + m1) + 1, 2.0))
        for m1 in range(nm + 1)
        if 0 <= a1 - m1 <= 2 * nf
    ]
    every = np.concatenate(rows)
    observed = log_weight(m_ref, f_het)
    return float(np.exp(logsumexp(every[every <= observed + 1e-9 * max(1.0, abs(observed))]) - logsumexp(every)))


def test_naive_hwe_x_exact__hand_computed_table() -> None:
    # One male, one female, A1 = 1: tables (m1=1, h=0) weight 1/1 and (m1=0, h=1) weight 2.
    assert naive_hwe_x_exact(0, 0, 1, 1, 0) == pytest.approx(1 / 3)
    assert naive_hwe_x_exact(0, 1, 0, 0, 1) == 1.0


def test_hwe_x_exact_p__matches_brute_force__every_small_table() -> None:
    tables = list(itertools.product(range(4), repeat=5))
    got = hwe_x_exact_p(*(np.array(column) for column in zip(*tables)))
    want = np.array([naive_hwe_x_exact(*table) for table in tables])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    # Same with a tiny working set (many groups, bands split across chunks).
    again = hwe_x_exact_p(*(np.array(column) for column in zip(*tables)), max_cells=3)
    np.testing.assert_allclose(again, got, rtol=1e-12, atol=0)


def test_hwe_x_exact_p__matches_log_space_enumeration__hundreds_of_samples() -> None:
    rng = np.random.default_rng(7)
    tables = []
    for freq in (0.002, 0.02, 0.2, 0.5):
        for _ in range(3):
            n_males, n_females = (int(x) for x in rng.integers(1, 400, size=2))
            f_ref = rng.binomial(n_females, (1 - freq) ** 2)
            f_alt = rng.binomial(n_females - f_ref, freq**2 / (1 - (1 - freq) ** 2))
            m_ref = rng.binomial(n_males, 1 - freq)
            tables.append((f_ref, n_females - f_ref - f_alt, f_alt, m_ref, n_males - m_ref))
    tables.append((150, 0, 150, 100, 100))  # far out of equilibrium: p ~ 1e-80
    got = hwe_x_exact_p(*(np.array(column) for column in zip(*tables)))
    want = np.array([log_space_hwe_x_exact(*table) for table in tables])
    assert want.min() < 1e-50
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_hwe_x_exact_p__no_male__equals_autosomal_test() -> None:
    rng = np.random.default_rng(3)
    hom_ref, het, hom_alt = (rng.integers(0, 60, size=300) for _ in range(3))
    zeros = np.zeros(300, dtype=np.int64)
    got = hwe_x_exact_p(hom_ref, het, hom_alt, zeros, zeros)
    np.testing.assert_array_equal(got, hwe_exact_p(hom_ref, het, hom_alt))


def test_hwe_x_exact_p__no_female__single_table() -> None:
    zeros = np.zeros(4, dtype=np.int64)
    got = hwe_x_exact_p(zeros, zeros, zeros, [0, 5, 3, 40], [7, 0, 9, 1])
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0, 1.0])
    assert naive_hwe_x_exact(0, 0, 0, 3, 9) == 1.0


def test_hwe_x_exact_p__edge_cases() -> None:
    got = hwe_x_exact_p([0, 4, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 3, 2, 0], [0, 0, 0, 1])
    assert np.isnan(got[0])  # no calls
    assert got[1] == 1.0  # monomorphic: a single table
    assert got[2] == 1.0  # two equally probable tables: the alt allele in the female or a male
    assert got[3] == pytest.approx(naive_hwe_x_exact(1, 0, 0, 0, 1))  # 2 tables, weights 1 (observed) and 2
    assert hwe_x_exact_p([], [], [], [], []).shape == (0,)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (([1], [-1], [0], [0], [0]), "female_het must be non-negative"),
        (([1.5], [0], [0], [0], [0]), "female_hom_ref must hold integer counts"),
        (([[1]], [0], [0], [0], [0]), "female_hom_ref must be 1-D"),
        (([1], [0], [0], [0], [0, 1]), "differ in length"),
        (([1], [0], [0], [-2], [0]), "male_ref must be non-negative"),
    ],
)
def test_hwe_x_exact_p__rejects_bad_counts(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hwe_x_exact_p(*arguments)


def test_hwe_x_exact_p__rejects_bad_max_cells() -> None:
    with pytest.raises(ValueError, match="max_cells"):
        hwe_x_exact_p([1], [1], [1], [1], [1], max_cells=0)


# --- against plink2 ---------------------------------------------------------------------

_SEX = {1: "1", 2: "2", 0: "NA"}


def _simulate_chrx(seed: int, n_variants: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Random chrX genotypes: (sex per sample 1/2/0, alt-allele dosage per variant x sample, -1 missing).

    Males get 0/1, females and unknown-sex samples 0/1/2. Frequencies range from very
    rare to common; variant 0 is far out of equilibrium (no female het), a few calls are missing.
    """
    rng = np.random.default_rng(seed)
    sex = rng.choice([1, 2, 0], size=int(rng.integers(250, 400)), p=[0.45, 0.47, 0.08])
    freq = np.concatenate([[0.4, 0.001, 0.003, 0.01], rng.uniform(0.0, 0.5, n_variants - 4)])
    female_like = sex != 1
    dosage = np.where(
        female_like[None, :],
        rng.binomial(2, freq[:, None], size=(n_variants, sex.size)),
        rng.binomial(1, freq[:, None], size=(n_variants, sex.size)),
    )
    dosage[0, female_like] = 2 * rng.binomial(1, 0.4, size=int(female_like.sum()))
    dosage[rng.random(dosage.shape) < 0.01] = -1
    return sex, dosage


def _write_vcf(path: Path, sex: np.ndarray, dosage: np.ndarray) -> None:
    diploid, haploid = {-1: "./.", 0: "0/0", 1: "0/1", 2: "1/1"}, {-1: ".", 0: "0", 1: "1"}
    lines = [
        "##fileformat=VCFv4.2",
        "##contig=<ID=X,length=156040895>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"s{i}" for i in range(sex.size)),
    ]
    for v, row in enumerate(dosage):
        calls = [(haploid if s == 1 else diploid)[int(d)] for s, d in zip(sex, row)]
        lines.append(f"X\t{10_000_000 + 1000 * v}\tv{v}\tA\tG\t.\t.\t.\tGT\t" + "\t".join(calls))
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".psam").write_text("#IID\tSEX\n" + "".join(f"s{i}\t{_SEX[s]}\n" for i, s in enumerate(sex)))


def _read_hardy_x(path: Path) -> dict[str, dict[str, str]]:
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    return {row[header.index("ID")]: dict(zip(header, row)) for row in rows}


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_hwe_x_exact_p__matches_plink2_hardy_x(seed: int, tmp_path: Path) -> None:
    plink2 = shutil.which("plink2")
    if plink2 is None:
        pytest.skip("plink2 is not installed")
    sex, dosage = _simulate_chrx(seed)
    vcf = tmp_path / "x.vcf"
    _write_vcf(vcf, sex, dosage)
    out = tmp_path / "out"
    subprocess.run(
        [plink2, "--vcf", str(vcf), "--psam", str(vcf.with_suffix(".psam")), "--split-par", "b38",
         "--hardy", "--threads", "1", "--out", str(out)],
        check=True, capture_output=True,
    )
    table = _read_hardy_x(out.with_suffix(".hardy.x"))
    # Unknown-sex samples count neither as females nor as males (plink2's rule).
    female, male = dosage[:, sex == 2], dosage[:, sex == 1]
    counts = [(female == 0).sum(1), (female == 1).sum(1), (female == 2).sum(1), (male == 0).sum(1), (male == 1).sum(1)]
    got = hwe_x_exact_p(*counts)
    assert len(table) == dosage.shape[0]
    for v in range(dosage.shape[0]):
        row = table[f"v{v}"]
        assert row["A1"] == "A"  # plink2's A1 is REF here: its counts are ours
        plink_counts = [row[c] for c in ("FEMALE_HOM_A1_CT", "FEMALE_HET_A1_CT", "FEMALE_TWO_AX_CT", "MALE_A1_CT", "MALE_AX_CT")]
        assert [int(c) for c in plink_counts] == [int(c[v]) for c in counts], f"v{v}"
        assert got[v] == pytest.approx(float(row["P"]), rel=1e-4, abs=0), f"v{v}: {row}"
    assert got[0] < 1e-20  # the variant out of equilibrium
