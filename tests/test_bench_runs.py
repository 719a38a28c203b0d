"""bench/capsat_runs.py --pair: two runs' CapSAT paired over the same test queries."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A bench script (not a package module) loaded by its file name."""
    spec = importlib.util.spec_from_file_location(name, REPO / f"bench/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench():
    return _script("capsat_runs")


def _run(folder: Path, scores: list[float], auc: float, ids: list[str]) -> Path:
    (folder / "eval_140").mkdir(parents=True)
    (folder / "eval_140" / "results.json").write_text(json.dumps({
        "query_ids": ids, "per_query": {"capsat:best": {"score": scores}},
        "routers": {"capsat:best": {"auc": auc}, "aptitude_prior": {"auc": 0.6}}}))
    return folder


def test_pair_reports_the_paired_routed_difference_and_refuses_other_queries(tmp_path):
    bench = _bench()
    rng = np.random.default_rng(0)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    b[:20] = 1.0  # B right wherever A was, and on some more
    ids = [f"q{i}" for i in range(200)]
    run_a = _run(tmp_path / "a", a.tolist(), 0.61, ids)
    run_b = _run(tmp_path / "b", b.tolist(), 0.65, ids)
    table = bench.pair(run_a, run_b)
    gain = float((b - a).mean())
    row = next(line for line in table.splitlines() if line.startswith("| 140 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith(f"{gain:+.4f} [") and cells[2:] == ["+0.0100", "+0.0500"]
    low = float(cells[1].split("[")[1].split(",")[0])
    assert 0 < low < gain  # B never loses a query, so the interval is above zero
    other = _run(tmp_path / "other", b.tolist(), 0.65, ids[::-1])
    with pytest.raises(ValueError, match="different test queries"):
        bench.pair(run_a, other)
    with pytest.raises(FileNotFoundError, match="no eval"):
        bench.pair(tmp_path / "missing", run_b)


def test_read_without_labels_scores_each_router_both_ways_and_refuses_seen_queries(
        small_data_path, tiny_base, tmp_path):
    """A router trained on the split's train part is read on its test part with and without
    task labels (the two readings differ: the start reads the task); one that saw test queries
    is refused."""
    from capsat.capsat_model.router import CapsatRouter
    from train.data import prepare
    from train.trainer import CapsatTrainer
    from test_train import recipe

    model, config = recipe(small_data_path, tiny_base, tmp_path / "run", use_llm=False,
                           encoder_steps=2, llm_steps=0, start_knn_grid=[],
                           start_prior_shrink_grid=[], start_difficulty_grid=[],
                           task_label_share=0.0)
    CapsatTrainer(model, config, prepare(config, progress=False)).train()
    router_dir = tmp_path / "run" / "best"
    out = tmp_path / "read.json"
    script = _script("read_without_labels")
    script.main(["--data", small_data_path, "--seed", "0", "--out", str(out), str(router_dir)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["labelled"] for r in rows] == [True, False]
    assert all(0.0 <= r["routed_accuracy"] <= 1.0 and r["top_shares"] for r in rows)
    assert rows[0]["auc"] != rows[1]["auc"]  # the task label is read, or not
    seen = CapsatRouter.load(router_dir)
    # A router whose record says it saw the test queries is refused.
    from data_builders.experiment import prepare_experiment
    _, _, test = prepare_experiment(small_data_path, "query", seed=0).parts()
    seen.fitted_on.query_ids = sorted(set(seen.fitted_on.query_ids) | set(test.query_ids[:2]))
    seen.save_pretrained(tmp_path / "seen")
    with pytest.raises(ValueError, match="fitted on 2 of the test queries"):
        script.main(["--data", small_data_path, "--out", str(tmp_path / "x.json"),
                     str(tmp_path / "seen")])


def test_known_label_ceiling_pairs_each_router_with_the_prior_of_every_size(small_data_path,
                                                                           tmp_path):
    """The known-label routers are scored on the held-out models' test rows once, and each
    aptitude size's prior on the same rows: the paired AUC difference is the two AUCs' one."""
    out = tmp_path / "ceiling.json"
    _script("known_label_ceiling").main([
        "--data", small_data_path, "--split", "model", "--test_size", "0.4",
        "--aptitude-items", "8,16", "--routers", "knn", "--out", str(out)])
    result = json.loads(out.read_text())
    assert len(result["held_out_models"]) == 2
    knn = result["known_label_routers"]["knn"]
    assert set(result["aptitude_prior"]) == {"8", "16"}
    for prior in result["aptitude_prior"].values():
        gain = prior["versus"]["knn"]["auc_minus_prior"]
        assert gain["difference"] == pytest.approx(knn["auc"] - prior["auc"])
        assert gain["low"] <= gain["difference"] <= gain["high"]
    # More aptitude items, another prior (two per task against four).
    assert result["aptitude_prior"]["8"]["auc"] != result["aptitude_prior"]["16"]["auc"]


def test_trained_step_parts_keeps_step_0_routing_with_the_query_level_part_alone(
        small_data_path, tiny_base, tmp_path):
    """The query-level part of a checkpoint's change shifts every candidate of a query alike:
    routing and query AUC stay step 0's, on validation and test; the whole change moves them."""
    from train.data import prepare
    from train.trainer import CapsatTrainer
    from test_train import cli_args, recipe

    model, config = recipe(small_data_path, tiny_base, tmp_path / "run", use_llm=False,
                           encoder_steps=4, llm_steps=0, lr_encoder=0.05, start_knn_grid=[],
                           start_prior_shrink_grid=[], start_difficulty_grid=[],
                           task_label_share=0.0)
    CapsatTrainer(model, config, prepare(config, progress=False)).train()
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    out = tmp_path / "parts.json"
    _script("trained_step_parts").main(["--checkpoint", str(checkpoint), "--out", str(out),
                                        "--", *cli_args(model, config)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    zero, level, trained = (rows["step 0"], rows["query-level part only"], rows["trained"])
    for part in ("validation", "test"):
        assert level[part]["routed_accuracy"] == zero[part]["routed_accuracy"]
        assert level[part]["query_auc"] == pytest.approx(zero[part]["query_auc"])
        assert trained[part]["log_loss"] != pytest.approx(zero[part]["log_loss"])


def test_over_seeds_means_the_per_seed_differences_and_refuses_other_splits(tmp_path):
    """The mean row is the mean of each seed's paired difference, its interval from the
    seeds' standard errors; the best classic router is the one with the best routed accuracy
    on that seed; a saved router paired in every run gets columns of its own; a model-split
    run is refused."""
    script = _script("capsat_runs")

    def diff(d, half):
        return {"difference": d, "low": d - half, "high": d + half}

    runs = []
    for seed, (knn, kmeans) in enumerate([(0.02, -0.01), (0.04, 0.03)]):
        classic = {n: {"routed_accuracy": 0.5, "query_auc": 0.6} for n in script.CLASSIC}
        classic["kmeans"] = {"routed_accuracy": 0.9, "query_auc": 0.7}
        minus = {n: {"routed_accuracy": diff(0.0, 0.01), "query_auc": diff(0.0, 0.01)}
                 for n in script.CLASSIC}
        minus["knn"]["routed_accuracy"] = diff(knn, 0.0196)
        minus["kmeans"] = {"routed_accuracy": diff(kmeans, 0.0392), "query_auc": diff(0.001, 0.01)}
        minus["per_task_best_single"] = {"routed_accuracy": diff(0.0, 0.0)}
        minus["capsat:off"] = {"routed_accuracy": diff(0.01 + 0.02 * seed, 0.0196),
                               "query_auc": diff(-0.002, 0.001)}
        summary = {"evaluations": {"140": {
            "split": {"kind": "query", "seed": seed}, "capsat_minus": minus,
            "routers": {"capsat:best": {"routed_accuracy": 0.6, "query_auc": 0.65}, **classic}}}}
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    table = script.over_seeds(runs)
    mean_row = table.splitlines()[-1]
    # kNN: (0.02 + 0.04) / 2; standard errors 0.01 each -> sqrt(2) x 0.01 / 2.
    half = 1.96 * (2 ** 0.5) * 0.01 / 2
    assert f"+0.0300 [{0.03 - half:+.4f}, {0.03 + half:+.4f}] (2/2 ≥ 0)" in mean_row
    assert "+0.0100 [" in mean_row and "(1/2 ≥ 0)" in mean_row  # kmeans, the best classic
    assert "kmeans: -0.0100" in table
    # A saved router paired in every run: two more columns, meant the same way.
    assert "− capsat:off (routed) | − capsat:off (query AUC) |" in table.splitlines()[0]
    assert f"+0.0200 [{0.02 - half:+.4f}, {0.02 + half:+.4f}] (2/2 ≥ 0)" in mean_row
    assert mean_row.endswith("(0/2 ≥ 0) |")  # query AUC: -0.002 on both seeds
    assert all(row.count("|") == 10 for row in table.splitlines())
    summary["evaluations"]["140"]["split"]["kind"] = "model"
    (runs[1] / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="not a query-split run"):
        script.over_seeds(runs)


def test_a_saved_router_given_as_a_baseline_is_paired_with_capsat(small_data_path, tiny_base,
                                                                   tmp_path):
    """``--baselines capsat:PATH`` (another router, such as the same one with other weights) is
    evaluated on the same rows and paired with CapSAT under its label: the same router saved
    twice differs by nothing, in routing and in pooled AUC."""
    import shutil

    from train.data import prepare
    from train.trainer import CapsatTrainer
    from test_train import cli_args, recipe

    root = tmp_path / "runs" / "pair"
    model, config = recipe(small_data_path, tiny_base, root / "train", use_llm=False,
                           encoder_steps=2, llm_steps=0, start_knn_grid=[],
                           start_difficulty_grid=[])
    CapsatTrainer(model, config, prepare(config, progress=False)).train()
    shutil.copytree(root / "train" / "best", root / "same_router")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"data: {small_data_path}\n")
    _bench().main(["--name", "pair", "--out", str(tmp_path / "runs"), "--recipe",
                   str(recipe_file), "--skip-train", "--baselines",
                   f"knn,capsat:{root / 'same_router'}", "--", *cli_args(model, config)])
    summary = json.loads((root / "summary.json").read_text())
    (evaluation,) = summary["evaluations"].values()
    minus = evaluation["capsat_minus"]
    assert {"knn", "capsat:same_router"} <= set(minus)
    assert minus["capsat:same_router"]["routed_accuracy"]["difference"] == 0
    assert minus["capsat:same_router"]["auc"]["difference"] == pytest.approx(0.0, abs=1e-12)
    assert minus["knn"]["auc"]["difference"] != pytest.approx(0.0, abs=1e-6)
