"""The CapSAT router: scoring, save_pretrained / from_pretrained, onboarding, eval, explain.

A tiny llama saved as a local base-model folder stands in for SmolLM2 (tests/tiny_llm.py);
the real embedded model is exercised by the test marked slow.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.explain import explain
from capsat.capsat_model.router import CapsatRouter
from capsat.cli import main as cli_main
from capsat.evaluation import evaluate
from capsat.routers import Router
from capsat.routers.provenance import Provenance
from data_builders import DataError
from data_builders.splits import make_split
from train.config import TrainConfig
from train.data import prepare

SMALL = CapsatConfig(max_instruction_tokens=24, n_soft_tokens=2, connector_hidden=32, irt_dim=4,
                     lora_r=2)


@pytest.fixture(scope="module")
def data(small_data_path):
    return prepare(TrainConfig(data=small_data_path, k_per_task=3))


@pytest.fixture(scope="module")
def router(data, tiny_base):
    config = dataclasses.replace(SMALL, base_model=tiny_base)
    return CapsatRouter.create(config, data.candidates, data.aptitude.tasks, data.keywords)


def test_scores_every_candidate_in_one_pass(router, data):
    texts = data.validation.texts[:4]
    probs = router.predict_proba(texts)
    assert probs.shape == (4, len(router.models))
    assert ((probs > 0) & (probs < 1)).all()
    # Candidates differ only by their soft tokens, and that is enough to separate them.
    assert np.ptp(probs, axis=1).min() > 0
    # A candidate scored in the packed pool gets what it gets scored alone.
    full_models, full_features = list(router.models), router.features.clone()
    try:
        j = 2
        router.models, router.features = [full_models[j]], full_features[[j]]
        alone = router.predict_proba(texts)
    finally:
        router.models, router.features = full_models, full_features
    np.testing.assert_allclose(alone[:, 0], probs[:, j], atol=1e-5)


def test_scoring_progress_bar_can_be_turned_off(router, data, capsys):
    texts = (list(data.validation.texts) * 64)[:64]  # 8 batches: long enough for a bar
    router.predict_proba(texts)
    assert "capsat: scoring" in capsys.readouterr().err
    router.progress = False  # what `capsat route --no-progress` sets
    try:
        router.predict_proba(texts)
    finally:
        router.progress = True
    assert "capsat: scoring" not in capsys.readouterr().err


def test_lora_targets_exist_and_base_is_frozen(router):
    network = router.network
    names = {n.rsplit(".", 1)[-1] for n, _ in network.llm.named_modules()}
    assert set(network.lora_targets) <= names
    lora = [n for n, p in network.llm.named_parameters() if "lora_" in n and p.requires_grad]
    frozen = [n for n, p in network.llm.named_parameters() if "lora_" not in n]
    assert len(lora) == 2 * len(network.lora_targets) * network.llm.config.num_hidden_layers
    assert not any(p.requires_grad for n, p in network.llm.named_parameters() if n in frozen)


def test_save_pretrained_and_load_in_a_fresh_process(router, data, tmp_path):
    router.save_pretrained(tmp_path / "r")
    files = {p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*")
             if p.is_file()}
    assert {"config.json", "heads.safetensors", "registry.json", "README.md", "router.json",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    adapter = json.loads((tmp_path / "r" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == router.config.base_model
    registry = json.loads((tmp_path / "r" / "registry.json").read_text())
    assert registry["models"] == router.models and registry["tasks"] == router.tasks
    texts = data.validation.texts[:3]
    expected = router.predict_proba(texts)
    script = ("import json, sys; from capsat.routers import Router; "
              "r = Router.load(sys.argv[1]); "
              "print(json.dumps(r.predict_proba(json.loads(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r"), json.dumps(texts)],
                         capture_output=True, text=True, check=True, timeout=300)
    np.testing.assert_array_equal(np.array(json.loads(out.stdout.strip().splitlines()[-1])),
                                  expected)


def test_saved_config_must_be_complete(router, tmp_path):
    router.save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["lora_r"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lora_r"):
        CapsatRouter.from_pretrained(tmp_path / "r")


def test_onboarding_adds_a_model_without_retraining(router, data, tmp_path):
    router.save_pretrained(tmp_path / "r")
    newcomer = data.candidates[0]
    aptitude = tmp_path / "aptitude.json"
    aptitude.write_text(json.dumps(newcomer.aptitude))
    assert cli_main(["onboard", "--router", str(tmp_path / "r"), "--name", "newcomer",
                     "--aptitude", str(aptitude), "--price", '{"input_price": 0.1}']) == 0
    loaded = CapsatRouter.from_pretrained(tmp_path / "r")
    assert loaded.models[-1] == "newcomer" and loaded.candidates["newcomer"].price
    probs = loaded.predict_proba(data.validation.texts[:2], ["newcomer", newcomer.name])
    # Same aptitude results -> same representation -> same soft tokens -> same scores.
    np.testing.assert_allclose(probs[:, 0], probs[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="already"):
        loaded.onboard("newcomer", newcomer.aptitude)
    with pytest.raises(DataError, match="unknown task"):
        loaded.onboard("other", {"astrology": 0.5})
    partial = dict(list(newcomer.aptitude.items())[:1])
    with pytest.raises(DataError, match="no aptitude result"):
        loaded.onboard("other", partial)


def test_capsat_in_the_eval_harness_and_explain(router, data, small_data_path, tmp_path):
    # What training records: the train and validation parts (the trainer adds core items).
    router.fitted_on = Provenance.from_tables(data.train, data.validation, split="query",
                                              seed=0)
    router.save_pretrained(tmp_path / "r")
    result = evaluate(small_data_path, "query", f"best_single,capsat:{tmp_path / 'r'},capsat")
    assert "capsat train" in result.skipped["capsat"]
    row = result.routers["capsat:r"]
    for metric in ("routed_accuracy", "auc", "query_auc", "log_loss", "ece", "gap_closed",
                   "gap_closed_per_task"):
        assert row[metric] is not None
    # A router that saw some of the test queries in training is refused, not scored.
    test_ids = list(data.split.test)
    leaky = dataclasses.replace(router.fitted_on,
                                query_ids=router.fitted_on.query_ids + test_ids[:2])
    router.fitted_on, kept = leaky, router.fitted_on
    try:
        router.save_pretrained(tmp_path / "leaky")
        router.fitted_on = None
        router.save_pretrained(tmp_path / "unknown")
    finally:
        router.fitted_on = kept
    refused = evaluate(small_data_path, "query", f"capsat:{tmp_path / 'leaky'},"
                                                 f"capsat:{tmp_path / 'unknown'}")
    assert "fitted on 2 of these test queries" in refused.skipped["capsat:leaky"]
    assert "--allow-unknown-provenance" in refused.skipped["capsat:unknown"]
    assert not refused.routers
    allowed = evaluate(small_data_path, "query", f"capsat:{tmp_path / 'unknown'}",
                       allow_unknown_provenance=True)
    assert set(allowed.routers) == {"capsat:unknown"}
    with pytest.raises(DataError, match="--allow-unknown-provenance"):
        explain(str(tmp_path / "unknown"), small_data_path, max_queries=20)
    with pytest.raises(DataError, match="fitted on 2 of the queries to explain"):
        explain(str(tmp_path / "leaky"), small_data_path, max_queries=0)
    report = explain(str(tmp_path / "r"), small_data_path, max_queries=20, out_dir=tmp_path / "x")
    summary = report["summary"]
    assert summary["queries"] == 20 and set(summary["spearman_difficulty_vs_accuracy_per_task"])
    assert list(report["abilities"].index) == router.models
    assert (tmp_path / "x" / "abilities.csv").exists() and (tmp_path / "x" / "queries.csv").exists()


def test_save_pretrained_is_atomic(router, data, tmp_path, monkeypatch):
    """Item 6: a save that fails half-way (here: writing the heads) leaves the old router
    complete and loadable, and no half-written folder beside it."""
    import capsat.capsat_model.router as module

    target = tmp_path / "r"
    router.save_pretrained(target)
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    texts = data.validation.texts[:2]
    expected = router.predict_proba(texts)

    def broken(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(module, "save_file", broken)
    with pytest.raises(OSError, match="injected"):
        router.save_pretrained(target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    np.testing.assert_allclose(CapsatRouter.from_pretrained(target).predict_proba(texts),
                               expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_onboard_cli_writes_where_it_is_told(router, data, tmp_path, capsys):
    """Items 14 and 15: onboarding a shipped or hub router needs --out (never ./default);
    user mistakes are one-line errors naming the flag."""
    router.save_pretrained(tmp_path / "r")
    aptitude = tmp_path / "aptitude.json"
    aptitude.write_text(json.dumps(data.candidates[0].aptitude))
    args = ["onboard", "--name", "newcomer", "--aptitude", str(aptitude)]
    assert cli_main([*args, "--router", "default"]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()
    assert cli_main([*args, "--router", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 0
    assert "newcomer" in CapsatRouter.from_pretrained(tmp_path / "o").models
    assert "newcomer" not in CapsatRouter.from_pretrained(tmp_path / "r").models
    capsys.readouterr()
    assert cli_main([*args, "--router", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "already a candidate" in err and "--name" in err and "Traceback" not in err
    assert cli_main([*args, "--router", str(tmp_path / "r"), "--out", str(tmp_path / "p"),
                     "--price", "{input_price: 1}"]) == 2
    err = capsys.readouterr().err
    assert "--price is not valid JSON" in err and len(err.strip().splitlines()) == 1
    started = time.perf_counter()
    assert cli_main([*args, "--router", str(tmp_path / "no" / "such"), "--out",
                     str(tmp_path / "q")]) == 2
    assert "no such router folder" in capsys.readouterr().err
    assert time.perf_counter() - started < 2.0  # no hub lookup for a mistyped path


def test_bad_inputs(router):
    with pytest.raises(TypeError):
        router.predict_proba("one string")
    with pytest.raises(TypeError, match="text"):
        router.network.instruction_ids(42)
    with pytest.raises(ValueError, match="n_soft_tokens"):
        CapsatConfig(n_soft_tokens=0)
    with pytest.raises(DataError, match="CapSAT"):
        CapsatRouter.from_pretrained(__file__.rsplit("/", 1)[0])
    from capsat.capsat_model.router import DEFAULT_ROUTER_DIR

    if not DEFAULT_ROUTER_DIR.exists():  # never a hub download for the shipped name
        with pytest.raises(DataError, match="no default"):
            CapsatRouter.from_pretrained("default")


@pytest.mark.slow
def test_real_smollm2_router_scores_and_round_trips(data, tmp_path):
    """The embedded SmolLM2-135M-Instruct: converted once, LoRA on its real module names."""
    router = CapsatRouter.create(CapsatConfig(max_instruction_tokens=48), data.candidates,
                                 data.aptitude.tasks, data.keywords)
    assert router.network.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    texts = data.validation.texts[:2]
    probs = router.predict_proba(texts)
    assert probs.shape == (2, len(router.models)) and np.isfinite(probs).all()
    router.save_pretrained(tmp_path / "r")
    np.testing.assert_array_equal(Router.load(tmp_path / "r").predict_proba(texts), probs)
