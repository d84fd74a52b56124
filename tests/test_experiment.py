"""The kit's verdict rule and experiment grid (kit.experiment)."""
import math

import numpy as np
import pytest
from scipy import stats

from kit import experiment as ex


def test_interval_agrees_with_scipy_paired_t_test():
    rng = np.random.default_rng(0)
    base, method = rng.normal(0.3, 0.02, 5), rng.normal(0.32, 0.02, 5)
    low, high = ex.t_interval(method - base)
    reference = stats.ttest_rel(method, base).confidence_interval(0.95)
    assert math.isclose(low, reference.low, rel_tol=1e-9) and math.isclose(high, reference.high, rel_tol=1e-9)


def test_interval_needs_two_values_and_finite_ones():
    assert ex.t_interval([0.1]) is None
    with pytest.raises(ValueError, match="finite"):
        ex.t_interval([0.1, float("nan")])


@pytest.mark.parametrize("interval, margin, engaged, trained, expected", [
    ((0.01, 0.05), 0.02, True, True, "reproduced"),
    ((0.001, 0.005), 0.02, True, True, "no difference at this scale"),  # inside the margin wins over "above 0"
    ((-0.005, -0.001), 0.02, True, True, "no difference at this scale"),
    ((0.001, 0.025), 0.02, True, True, "reproduced"),
    ((-0.05, -0.01), 0.02, True, True, "not reproduced"),
    ((-0.01, 0.015), 0.02, True, True, "no difference at this scale"),
    ((-0.03, 0.015), 0.02, True, True, "inconclusive"),
    ((0.01, 0.05), 0.02, False, True, "not tested at this scale"),
    ((0.01, 0.05), 0.02, True, False, "baseline did not train"),
    (None, 0.02, True, True, "inconclusive"),
    ((0.01, 0.05), 0.02, None, True, "reproduced"),             # no check declared
])
def test_rule_table(interval, margin, engaged, trained, expected):
    assert ex.rule(interval, margin, engaged, trained) == expected


@pytest.mark.parametrize("interval, expected", [
    ((-0.01, 0.015), "reproduced"),            # inside +-margin: the method matches the baseline
    ((-0.03, 0.015), "inconclusive"),          # reaches past -margin
    ((0.025, 0.06), "not reproduced"),         # entirely beyond +margin
    ((-0.09, -0.03), "not reproduced"),        # entirely below -margin
    ((0.005, 0.03), "inconclusive"),
])
def test_similar_claims_are_an_equivalence_test(interval, expected):
    assert ex.rule(interval, 0.02, True, True, direction="similar") == expected


def test_similar_claim_compares_plain_differences():
    claim = ex.Claim("negligible", "A", "B", "acc", direction="similar", margin=0.02)
    result = ex.compare(claim, {0: 0.50, 1: 0.52, 2: 0.51}, {0: 0.505, 1: 0.515, 2: 0.512})
    assert result["difference_mean"] == pytest.approx(0.0006667, abs=1e-6)
    assert result["verdict"] == "reproduced" == ex.verdict_of(result)
    worse = ex.compare(claim, {0: 0.50, 1: 0.52, 2: 0.51}, {0: 0.40, 1: 0.41, 2: 0.42})
    assert worse["verdict"] == "not reproduced" == ex.verdict_of(worse)
    with pytest.raises(ValueError, match="needs a margin > 0"):
        ex.Claim("c", "A", "B", "acc", direction="similar")


def test_floor_in_another_metric():
    claim = ex.Claim("small objects", "A", "B", "APs", margin=0.01, baseline_floor=0.05, floor_metric="AP")
    base, method = {0: 0.001, 1: 0.002, 2: 0.001}, {0: 0.02, 1: 0.03, 2: 0.025}
    trained = ex.compare(claim, base, method, floor_values={0: 0.2, 1: 0.21, 2: 0.19})
    assert trained["verdict"] == "reproduced" == ex.verdict_of(trained) and trained["floor_metric"] == "AP"
    untrained = ex.compare(claim, base, method, floor_values={0: 0.01, 1: 0.02, 2: 0.01})
    assert untrained["verdict"] == "baseline did not train" == ex.verdict_of(untrained)
    with pytest.raises(ValueError, match="floor_values"):
        ex.compare(claim, base, method)
    with pytest.raises(ValueError, match="without a baseline_floor"):
        ex.Claim("c", "A", "B", "APs", floor_metric="AP")


def test_compare_signs_differences_by_the_papers_direction():
    claim = ex.Claim("lower error", baseline="A", method="B", metric="err", direction="lower", margin=0.01)
    result = ex.compare(claim, {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.20, 1: 0.22, 2: 0.19})
    assert result["difference_mean"] == pytest.approx(0.0966666, abs=1e-6)
    assert result["interval_95"][0] > 0 and result["verdict"] == "reproduced"
    assert result["n_seeds"] == 3 and result["seeds"] == [0, 1, 2]
    assert ex.verdict_of(result) == result["verdict"]


def test_compare_refuses_unpaired_seeds():
    claim = ex.Claim("c", "A", "B", "m")
    with pytest.raises(ValueError, match="every seed must pair"):
        ex.compare(claim, {0: 1.0, 1: 1.0}, {0: 1.0, 2: 1.0})


def test_baseline_floor_voids_the_comparison():
    claim = ex.Claim("c", "A", "B", "AP", margin=0.01, baseline_floor=0.05)
    result = ex.compare(claim, {0: 0.001, 1: 0.002, 2: 0.001}, {0: 0.1, 1: 0.1, 2: 0.12})
    assert result["verdict"] == "baseline did not train" == ex.verdict_of(result)


def test_failed_engagement_check_means_not_tested():
    check = ex.EngagementCheck("mean |offset| (px)", value=0.05, threshold=0.25)
    claim = ex.Claim("c", "A", "B", "acc")
    result = ex.compare(claim, {0: 0.5, 1: 0.5, 2: 0.5}, {0: 0.6, 1: 0.61, 2: 0.62}, check)
    assert result["verdict"] == "not tested at this scale"
    assert result["engaged"] == {"description": "mean |offset| (px)", "value": 0.05, "threshold": 0.25,
                                 "passed": False}


def test_paper_verdict():
    assert ex.paper_verdict([{"verdict": "reproduced"}]) == "reproduced"
    assert ex.paper_verdict([{"verdict": "reproduced"}, {"verdict": "reproduced"}]) == "reproduced"
    assert ex.paper_verdict([{"verdict": "reproduced"}, {"verdict": "inconclusive"}]) == "partly reproduced"
    assert ex.paper_verdict([{"verdict": "reproduced"}, {"verdict": "not reproduced"}]) == "partly reproduced"
    # none reproduced: one against the paper decides; any other mix is inconclusive
    assert ex.paper_verdict([{"verdict": "inconclusive"}, {"verdict": "not reproduced"}]) == "not reproduced"
    assert ex.paper_verdict([{"verdict": "not tested at this scale"},
                             {"verdict": "no difference at this scale"}]) == "inconclusive"
    with pytest.raises(ValueError, match="at least one"):
        ex.paper_verdict([])


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(direction="up"), "direction must be one of"),
    (dict(margin=-1.0), "margin must be a finite number >= 0"),
    (dict(margin=float("nan")), "margin must be a finite number >= 0"),
    (dict(method="A"), "baseline and method are the same arm"),
])
def test_bad_claims(kwargs, phrase):
    base = dict(name="c", baseline="A", method="B", metric="m")
    with pytest.raises(ValueError, match=phrase):
        ex.Claim(**{**base, **kwargs})


@pytest.mark.parametrize("env, expected", [({}, [0, 1, 2]), ({"KIT_SEEDS": ""}, [0, 1, 2]),
                                           ({"KIT_SEEDS": "10,11, 12"}, [10, 11, 12])])
def test_seeds_from_the_environment(env, expected):
    assert ex.seeds([0, 1, 2], env=env) == expected


@pytest.mark.parametrize("text, phrase", [("a,b", "comma-separated non-negative integers"),
                                          ("1.5", "comma-separated"), ("-1,2", "non-negative"),
                                          ("3,3", "distinct")])
def test_bad_kit_seeds(text, phrase):
    with pytest.raises(ValueError, match=phrase):
        ex.seeds([0], env={"KIT_SEEDS": text})


def test_mean_std_formatting():
    assert ex.mean_std([0.31, 0.32, 0.33], scale=100) == "32.0 ± 1.0 (n=3)"
    assert ex.mean_std([0.5], scale=100) == "50.0 (n=1)"
    comparison = {"difference_mean": 0.012, "interval_95": [-0.003, 0.027]}
    assert ex.difference_text(comparison, scale=100) == "+1.2 [-0.3, +2.7]"


def test_run_grid_is_seed_major_and_tidy():
    calls = []

    def run(arm, seed):
        calls.append((arm, seed))
        return {"metrics": {"acc": seed / 10 + (0.05 if arm == "B" else 0.0)}, "model": f"{arm}{seed}"}

    grid = ex.run_grid(["A", "B"], [0, 1, 2], run)
    assert calls == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert list(grid.table.columns) == ["arm", "seed", "acc"] and len(grid.table) == 6
    assert grid.extras["B", 2] == {"model": "B2"}
    result = grid.compare(ex.Claim("B beats A", "A", "B", "acc", margin=0.01))
    assert result["difference_mean"] == pytest.approx(0.05) and result["verdict"] == "reproduced"
    assert grid.per_arm()["A"]["acc"] == pytest.approx([0.0, 0.1, 0.2])
    assert grid.summary(scale=100).loc["B", "acc"] == "15.0 ± 10.0 (n=3)"


@pytest.mark.parametrize("metrics, phrase", [({"acc": float("nan")}, "not finite numbers"),
                                             ({"acc": True}, "not finite numbers"),
                                             ({"acc": "0.5"}, "not finite numbers")])
def test_run_grid_rejects_bad_metrics(metrics, phrase):
    with pytest.raises(ValueError, match=phrase):
        ex.run_grid(["A"], [0], lambda arm, seed: metrics)


def test_run_grid_rejects_inconsistent_metrics():
    with pytest.raises(ValueError, match="reported metrics"):
        ex.run_grid(["A", "B"], [0], lambda arm, seed: {"acc": 0.5} if arm == "A" else {"loss": 1.0})


def test_config_key_is_stable_and_sensitive():
    assert ex.config_key({"a": 1, "b": [1, 2]}) == ex.config_key({"b": [1, 2], "a": 1})
    assert ex.config_key({"a": 1}) != ex.config_key({"a": 2})


# ----------------------------------------------------------------------------- the record

def _record(tmp_path, comparisons, verdict, seeds=(0, 1, 2)):
    from kit import results

    metrics = {"A": {"AP": [0.30, 0.31, 0.29]}, "B": {"AP": [0.34, 0.36, 0.33]}}
    return results.record("P99", "cpu", "cpu", list(seeds), metrics, "B beats A", {}, verdict, "AP", 1.0,
                          folder=tmp_path, comparisons=comparisons)


def _comparison():
    claim = ex.Claim("B beats A", "A", "B", "AP", margin=0.01)
    return ex.compare(claim, {0: 0.30, 1: 0.31, 2: 0.29}, {0: 0.34, 1: 0.36, 2: 0.33})


def test_record_keeps_comparisons_and_the_machine(tmp_path):
    import json

    path = _record(tmp_path, [_comparison()], "reproduced")
    saved = json.loads(path.read_text())
    assert saved["comparisons"][0]["verdict"] == "reproduced" and saved["comparisons"][0]["n_seeds"] == 3
    assert {"cpu", "cores", "threads", "blas", "onednn"} <= set(saved["machine"])


@pytest.mark.parametrize("edit, verdict, phrase", [
    (lambda c: c, "not reproduced", "does not follow from the comparisons"),
    (lambda c: {**c, "verdict": "inconclusive"}, "inconclusive", "does not follow from the rule"),
    (lambda c: {**c, "interval_95": [0.5, 0.6]}, "reproduced", "do not follow from its values"),
    (lambda c: {**c, "method_values": [0.9, 0.9, 0.9]}, "reproduced", "not the record's per-seed"),
    (lambda c: {k: v for k, v in c.items() if k != "margin"}, "reproduced", "lacks"),
    (lambda c: {**c, "method": "C"}, "reproduced", "no metric 'AP' for arm 'C'"),
    (lambda c: {**c, "floor_values": [0.9, 0.9, 0.9]}, "reproduced", "floor_values are not the record's"),
    (lambda c: {**c, "floor_metric": "APs"}, "reproduced", "no metric 'APs' for arm 'A'"),
    (lambda c: {**c, "baseline_floor": 0.5}, "reproduced", "does not follow from the rule"),
])
def test_record_refuses_a_verdict_the_rule_does_not_give(tmp_path, edit, verdict, phrase):
    with pytest.raises(ValueError, match=phrase):
        _record(tmp_path, [edit(_comparison())], verdict)


# ----------------------------------------------------------------------------- evaluation during training

def test_evaluation_steps_are_even_and_end_at_the_last_step():
    assert ex.evaluation_steps(800, 4) == [199, 399, 599, 799]
    assert ex.evaluation_steps(3, 4) == [0, 1, 2]  # never more points than steps
    assert ex.evaluation_steps(1, 1) == [0]
    with pytest.raises(ValueError, match=">= 1"):
        ex.evaluation_steps(0, 4)


def test_evaluate_at_writes_into_the_history_and_survives_a_resume(tmp_path):
    import torch

    from kit.train import train

    x, y = torch.randn(16, 3), torch.randn(16, 1)
    seen_modes = []

    def evaluate(model):
        seen_modes.append(model.training)
        return {"mse": torch.nn.functional.mse_loss(model(x), y)}

    def fit(model, stop_after=None, iterations=8):
        evaluate_now = ex.evaluate_at(model, ex.evaluation_steps(iterations, 2), evaluate)

        def on_step(step, row):
            evaluate_now(step, row)
            if step == stop_after:
                raise KeyboardInterrupt  # a Stop at a step boundary: the checkpoint keeps the history

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return train(model, lambda step: None, lambda m, b, s: {"loss": torch.nn.functional.mse_loss(m(x), y)},
                     iterations, opt, checkpoint=tmp_path / "run.pt", progress=False, on_step=on_step)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Dropout(0.5))
    with pytest.raises(KeyboardInterrupt):
        fit(model, stop_after=5)  # evaluated at step 3, stopped after step 5
    assert seen_modes == [False] and model.training  # evaluated in eval mode, training mode restored
    history = fit(model)  # resumes at step 6: step 3's point comes back from the checkpoint
    assert seen_modes == [False, False]
    curve = ex.curve_of(history, "eval/mse")
    assert list(curve.index) == [4, 8] and curve.notna().all()
    with pytest.raises(KeyError, match="no column"):
        ex.curve_of(history, "eval/AP")


def test_aa_noise_is_root_two_times_the_spread():
    assert ex.aa_noise({0: 1.0, 1: 3.0}) == pytest.approx(2.0)  # sd = sqrt(2)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ex.aa_noise({0: 1.0})


def test_declared_and_verdict_tables():
    claim = ex.Claim("B beats A", "A", "B", "AP", margin=0.01)
    table = ex.declared([claim], checks={"B beats A": ("spread of the weights", 0.05)})
    assert table.loc["B beats A", "mechanism check"] == "spread of the weights >= 0.05"
    with pytest.raises(ValueError, match="undeclared"):
        ex.declared([claim], checks={"other": ("x", 1.0)})
    engaged = ex.EngagementCheck("spread", 0.01, 0.05)
    shown = ex.verdict_table([_comparison(), ex.compare(claim, {0: 0.3, 1: 0.3}, {0: 0.4, 1: 0.5}, engaged)],
                             scale=100)
    assert shown["verdict"].tolist() == ["reproduced", "not tested at this scale"]
    assert "FAILED" in shown["mechanism check"].iloc[1] and shown["margin"].iloc[0] == "±1.0"


def _claim_result(name, low, high, verdict):
    return {"claim": name, "difference_mean": (low + high) / 2, "interval_95": [low, high], "verdict": verdict}


def test_rerun_report_counts_only_decided_claims_against_the_page():
    page = [_claim_result("a", 0.01, 0.03, "reproduced"), _claim_result("b", -0.02, 0.03, "inconclusive")]
    rerun = {"seeds": [10, 11, 12], "machine": {"threads": 1, "cpu": "x"}, "recorded_at": "2026-12-02T10:00",
             "verdict": "partly reproduced",
             "comparisons": [_claim_result("a", 0.005, 0.02, "reproduced"), _claim_result("b", -0.05, -0.01, "not reproduced")]}
    text = ex.rerun_report(page, "partly reproduced", rerun, scale=100)
    assert "| a | +2.0 [+1.0, +3.0] → reproduced | +1.2 [+0.5, +2.0] → reproduced | yes |" in text
    assert "moved (this page makes no claim here)" in text and "contradicts" not in text
    rerun["comparisons"][0]["verdict"] = "inconclusive"
    assert "**The rerun contradicts this page on 1 claim(s)**: a." in ex.rerun_report(page, "x", rerun)
    assert "No rerun" in ex.rerun_report(page, "x", None)
    rerun["comparisons"] = rerun["comparisons"][:1]
    assert "older code" in ex.rerun_report(page, "x", rerun)


def test_rerun_path_names_seeds_and_threads():
    from kit import results
    path = results.rerun_path("P22", "cpu", [10, 11, 12], 1)
    assert path.parts[-3:] == ("cpu", "reruns", "P22-seeds-10-11-12-threads-1.json")
    with pytest.raises(ValueError, match="P01"):
        results.rerun_path("22", "cpu", [1], 1)
