"""Bad input to the results records (``kit.results.record`` and ``load_all``).

A record is what the scoreboard trusts: a wrong one must be refused when it is written, and a
broken file must be named when it is read. One table of refusals (exception type and a phrase
of the message), then what must still work: everything the notebooks pass today.
"""
import json
import math

import numpy as np
import pytest
import torch

from kit import experiment, results

GOOD = dict(paper="P01", profile="cpu", device="cpu", seeds=[0, 1],
            metrics={"ATSS": {"AP": [0.2, 0.3]}, "TOOD": {"AP": [0.25, 0.35]}}, claim="TOOD beats ATSS",
            paper_numbers={"TOOD (R-50 1x)": "42.4 AP"}, verdict="reproduced", headline="AP", wall_seconds=12.3,
            comparisons=[experiment.compare(experiment.Claim("TOOD beats ATSS", "ATSS", "TOOD", "AP"),
                                            {0: 0.2, 1: 0.3}, {0: 0.25, 1: 0.35})])


def record_with(**changes):
    """Call ``record`` with the good arguments, some of them changed; folder from the test."""
    return lambda folder: results.record(**{**GOOD, **changes}, folder=folder)


def bad_file(text):
    """``load_all`` over a results folder holding one good record and ``P02.json`` with ``text``."""
    def call(folder):
        results.record(**GOOD, folder=folder / "cpu")
        (folder / "cpu" / "P02.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        return results.load_all(folder)
    return call


BAD = [
    # id, call (gets a folder), exception type, phrase of the message
    ("metrics-empty", record_with(metrics={}), ValueError, r"metrics must be a non-empty dict"),
    ("profile-unknown", record_with(profile="laptop"), ValueError, r"profile must be one of smoke, cpu, gpu"),
    ("seeds-duplicated", record_with(seeds=[0, 0]), ValueError, r"seeds must be distinct .*\[0, 0\]"),
    ("seeds-not-ints", record_with(seeds=[0.0, 1.0]), TypeError, r"seeds must be ints"),
    ("metric-bool", record_with(metrics={"A": {"AP": [True, False]}}), TypeError,
     r"A/AP: metric values must be numbers .*True of type bool"),
    ("metric-numpy-bool", record_with(metrics={"A": {"AP": list(np.array([True, False]))}}), TypeError,
     r"A/AP: metric values must be numbers"),
    ("metric-text", record_with(metrics={"A": {"AP": ["0.2", "0.3"]}}), TypeError,
     r"A/AP: metric values must be numbers .*of type str"),
    ("metric-none", record_with(metrics={"A": {"AP": [0.2, None]}}), TypeError,
     r"A/AP: metric values must be numbers .*NoneType"),
    ("wall-seconds-nan", record_with(wall_seconds=math.nan), ValueError, r"wall_seconds must be a finite number"),
    ("wall-seconds-inf", record_with(wall_seconds=math.inf), ValueError, r"wall_seconds must be a finite number"),
    ("wall-seconds-negative", record_with(wall_seconds=-3.0), ValueError, r"wall_seconds must be .* >= 0"),
    ("paper-number-nan", record_with(paper_numbers={"AP": math.nan}), ValueError, r"paper_numbers\['AP'\] is nan"),
    ("paper-number-nested-nan", record_with(paper_numbers={"AP": {"R-50": math.nan}}), ValueError,
     r"P01: the record holds a non-finite number"),
    ("verdict-without-comparisons", record_with(comparisons=None), ValueError,
     r"verdict 'reproduced' needs its comparisons"),
    ("verdict-not-from-comparisons", record_with(verdict="inconclusive"), ValueError,
     r"verdict 'inconclusive' does not follow from the comparisons"),
    ("load-all-not-json", bad_file("{\"paper\": "), ValueError, r"results file .*P02\.json is not a valid record"),
    ("load-all-nan-constant", bad_file(json.dumps({**GOOD, "wall_seconds": math.nan})), ValueError,
     r"P02\.json is not a valid record: non-standard JSON constant NaN"),
    ("load-all-not-an-object", bad_file("[1, 2]"), ValueError, r"P02\.json is not a valid record: it lacks"),
    ("load-all-missing-field", bad_file(json.dumps({k: v for k, v in GOOD.items() if k != "claim"})), ValueError,
     r"P02\.json is not a valid record: it lacks \['claim'\]"),
    ("load-all-not-utf8", bad_file(b"\xff\xfe{}"), ValueError, r"P02\.json is not a valid record"),
]


@pytest.mark.parametrize("case, call, error, phrase", BAD, ids=[row[0] for row in BAD])
def test_bad_input_is_refused(case, call, error, phrase, tmp_path):
    folder = tmp_path / "results"
    with pytest.raises(error, match=phrase):
        call(folder)
    assert not (folder / "P01.json").exists()  # a refused record is never written


# --------------------------------------------------------------------------- what must work

def test_what_the_notebooks_pass_is_recorded_as_standard_json(tmp_path):
    metrics = {"A": {"AP": [np.float64(0.25), np.float32(0.5)], "loss": [torch.tensor(1.5), 2]},
               "B": {"AP": (0.1, 0.2)}}
    path = results.record(**{**GOOD, "metrics": metrics, "paper_numbers": {"AP": 42.4, "note": "text"},
                             "verdict": "no claim tested", "comparisons": None},
                          notes="x | y\nz", folder=tmp_path / "cpu")
    entry = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} written"))
    assert entry["metrics"]["A"]["loss"]["values"] == [1.5, 2.0]
    assert entry["metrics"]["B"]["AP"]["mean"] == pytest.approx(0.15)
    assert results.load_all(tmp_path)[0]["paper_numbers"] == {"AP": 42.4, "note": "text"}


def test_one_seed_bare_value(tmp_path):
    path = results.record(**{**GOOD, "seeds": [3], "metrics": {"A": {"AP": 0.4}}, "verdict": "no claim tested",
                             "comparisons": None}, folder=tmp_path)
    assert json.loads(path.read_text())["metrics"]["A"]["AP"] == {"values": [0.4], "mean": 0.4, "std": 0.0}
