"""Job specs: the runtime keys checked before anything is stored, and the one loader with overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.analyses.registry import ANALYSIS_NAMES
from pipeline.errors import ConfigurationError, InputError
from pipeline.federation.job_spec import (
    analysis_parameters,
    default_threshold,
    load_spec,
    maximum_threshold,
    parse_round_options,
)
from pipeline.secagg.prg import PRGS

ENROLLED = ("alpha", "beta", "gamma")


def test_parse_round_options__missing_analysis_lists_every_registered_name():
    with pytest.raises(ConfigurationError) as error:
        parse_round_options({"threshold": 2}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    for name in ANALYSIS_NAMES:
        assert name in str(error.value)


def test_parse_round_options__unknown_analysis_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigurationError, match="unknown analysis 'gwass'; expected one of .*'gwas'"):
        parse_round_options({"analysis": "gwass"}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)


def test_parse_round_options__num_neighbours_must_be_an_even_integer():
    options = parse_round_options({"analysis": "secure_sum", "num_neighbours": 2, "threshold": 2}, ENROLLED,
                                  known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    assert (options.analysis, options.participants, options.threshold, options.num_neighbours) == ("secure_sum", ENROLLED, 2, 2)
    for bad in (0, -1, 1, 3, True, "2"):
        with pytest.raises(ConfigurationError, match="num_neighbours"):
            parse_round_options({"analysis": "secure_sum", "num_neighbours": bad}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)


def test_parse_round_options__secagg_plus_threshold_leaves_room_for_one_dropout():
    # Two thirds of k + 1 = 3 shareholders plus one is 3 > k = 2: one dropout would halt every round.
    with pytest.raises(ConfigurationError, match="at most 2 .t <= num_neighbours"):
        parse_round_options({"analysis": "secure_sum", "num_neighbours": 2}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    enrolled = tuple(f"site{i:02d}" for i in range(12))
    options = parse_round_options({"analysis": "secure_sum", "num_neighbours": 4}, enrolled, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    assert options.num_neighbours == 4 and default_threshold(12, 4) == 4 <= maximum_threshold(12, 4) == 4


def test_parse_round_options__sites_threshold_and_timeout_are_checked():
    with pytest.raises(ConfigurationError, match="not enrolled"):
        parse_round_options({"analysis": "census", "sites": ["alpha", "mallory"]}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    with pytest.raises(ConfigurationError, match="threshold"):
        parse_round_options({"analysis": "census", "threshold": 4}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    with pytest.raises(ConfigurationError, match="stage_timeout"):
        parse_round_options({"analysis": "census", "stage_timeout": 0}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)


def test_load_spec__file_or_mapping_with_overrides_that_skip_none(tmp_path: Path):
    path = tmp_path / "job.yaml"
    path.write_text("analysis: census\nmin_allele_count: 5\nthreshold: 2\n")
    assert load_spec(path, {"threshold": 3, "rounds": None}) == {"analysis": "census", "min_allele_count": 5, "threshold": 3}
    assert load_spec({"analysis": "train"}, {"rounds": 4}) == {"analysis": "train", "rounds": 4}
    assert analysis_parameters(load_spec(path)) == {"min_allele_count": 5}
    path.write_text("- not a mapping\n")
    with pytest.raises(InputError, match="YAML mapping"):
        load_spec(path)


def test_parse_round_options__mask_prg_is_one_of_the_known_prgs():
    for prg in ("aes128-ctr", "chacha20"):
        parse_round_options({"analysis": "secure_sum", "mask_prg": prg}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
    for bad in ("aes", "mt19937", 1, None):
        with pytest.raises(ConfigurationError, match="job spec key 'mask_prg' must be one of aes128-ctr, chacha20"):
            parse_round_options({"analysis": "secure_sum", "mask_prg": bad}, ENROLLED, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
