"""capsat calibrate on real MMLU-Pro outcomes (the mmlu_small slice, costs = output length)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from capsat import make_router
from capsat.cli import main as cli_main
from capsat.routing.policies import Policy, choose
from capsat.serving.calibrate import CalibrateConfig, calibrate
from capsat.serving.controller import parse_policy
from data_builders.experiment import prepare_experiment


def test_target_share_is_met_on_validation_and_reported_on_test(small_data_path, tmp_path,
                                                                capsys):
    out = tmp_path / "calibrated.json"
    assert cli_main(["calibrate", "--router", "knn", "--data", small_data_path,
                     "--target-share", "mathstral-7B=0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "share mathstral-7B" in printed and "target 0.3000" in printed
    policy = Policy.parse(result["policy"])
    assert policy.kind == "threshold"
    assert parse_policy(result["serve_model"], Policy("max-accuracy")) == policy
    val, test = result["validation"], result["test"]
    # Closest achievable share on the validation rows (one row is 1/rows of share).
    assert abs(val["share"]["mathstral-7B"] - 0.3) <= 1.5 / val["rows"]
    assert val["rows"] > 0 and test["rows"] > val["rows"]
    assert 0 <= test["share"]["mathstral-7B"] <= 1 and sum(test["share"].values()) == \
        pytest.approx(1)

    # The figures are the policy's on those rows: recompute the validation share here.
    experiment = prepare_experiment(small_data_path, "query", seed=0)
    train, validation, _ = experiment.parts()
    router = make_router("knn").fit(experiment.table.subset(list(experiment.split.train)))
    probs = router.predict_proba(validation.texts)
    means = train.costs[router.models].mean(axis=0).to_numpy()
    costs = np.tile(means, (len(validation), 1))
    picked = choose(policy, probs, costs)
    share = float(np.mean(picked == router.models.index("mathstral-7B")))
    assert share == pytest.approx(val["share"]["mathstral-7B"])


def test_target_cost_and_refusals(small_data_path, mmlu_small, tmp_path, capsys):
    result = calibrate(CalibrateConfig(router="knn", data=small_data_path, target_cost=900.0,
                                       policy_kind="tradeoff"))
    assert result["validation"]["mean_cost"] <= 900.0
    assert result["policy"].startswith("tradeoff:")
    # A router fitted on every row has seen the validation part: refused.
    seen = make_router("best_single").fit(mmlu_small)
    folder = tmp_path / "seen"
    seen.save(folder)
    assert cli_main(["calibrate", "--router", str(folder), "--data", small_data_path,
                     "--target-share", "gemma-7b=0.2"]) == 2
    assert "was fitted on" in capsys.readouterr().err
    for args, message in ((["--target-share", "gemma-7b=0.2", "--target-cost", "5"],
                           "exactly one"),
                          (["--target-share", "gemma-7b"], "MODEL=SHARE"),
                          (["--target-share", "gpt-9=0.2"], "not a candidate"),
                          (["--target-cost", "1", "--policy-kind", "budget"], "policy kind")):
        assert cli_main(["calibrate", "--router", "best_single", "--data", small_data_path,
                         *args]) == 2
        assert message in capsys.readouterr().err
