"""The CapSAT router (v3): evidence encoder, packed scoring, save_pretrained / from_pretrained,
onboarding from aptitude results, eval, explain.

A tiny llama saved as a local base-model folder stands in for SmolLM2 (tests/tiny_llm.py);
the real embedded model is exercised by the tests marked slow.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

from capsat.capsat_model.config import CapsatConfig
from capsat.capsat_model.explain import explain
from capsat.capsat_model.router import CapsatRouter, WeakAptitudeInput
from capsat.cli import main as cli_main
from capsat.evaluation import evaluate
from capsat.routers import Router
from capsat.routers.provenance import Provenance
from data_builders import DataError
from train.config import TrainConfig
from train.data import prepare

SMALL = CapsatConfig(max_instruction_tokens=24, instruction_head_tokens=12, n_soft_tokens=2,
                     connector_hidden=32, capability_dim=32, encoder_hidden=32, irt_dim=4,
                     lora_r=2)


@pytest.fixture(scope="module")
def data(small_data_path):
    return prepare(TrainConfig(data=small_data_path, k_per_task=3), progress=False)


def make_router(data, tiny_base, **overrides) -> CapsatRouter:
    config = dataclasses.replace(SMALL, base_model=tiny_base, **overrides)
    return CapsatRouter.create(config, data.bank, data.train_models, data.tasks,
                               aptitude=data.aptitude, aptitude_items=data.aptitude_items)


@pytest.fixture(scope="module")
def router(data, tiny_base):
    router = make_router(data, tiny_base)
    with torch.no_grad():  # a readout that is not zero, so the encoder's correction shows
        router.network.encoder.readout.weight.normal_(0, 0.5)
        router.network.gate.fill_(0.5)
    return router


def test_scores_every_candidate_in_one_pass(router, data):
    texts = data.validation.texts[:4]
    probs = router.predict_proba(texts)
    assert probs.shape == (4, len(router.models))
    assert ((probs > 0) & (probs < 1)).all()
    assert np.ptp(probs, axis=1).min() > 0  # candidates differ by their evidence alone
    # A candidate scored in the pool gets what it gets scored alone: the encoder reads only
    # its own evidence and the packed mask keeps the candidates' soft tokens apart.
    network, j = router.network, 2
    embeddings = torch.from_numpy(router.embed(router_queries(texts)).astype(np.float32))
    with torch.no_grad():
        alone = network(embeddings, router.evidence([j]),
                        network.pack_queries(texts, 1)).logits[:, 0]
    np.testing.assert_allclose(torch.sigmoid(alone).numpy(), probs[:, j], atol=1e-5)
    # Asking for some candidates scores only those (the LLM packs just them), same figures.
    some = router.predict_proba(texts, [router.models[j], router.models[0]])
    np.testing.assert_allclose(some, probs[:, [j, 0]], atol=1e-5)


def router_queries(texts):
    from capsat.routers import Queries

    return Queries(list(texts))


def test_the_llm_changes_the_answer_through_the_gate(router, data):
    texts = data.validation.texts[:3]
    with_llm = router.predict_proba(texts)
    router.read_through_llm = False
    try:
        direct = router.predict_proba(texts)
    finally:
        router.read_through_llm = True
    assert not np.allclose(with_llm, direct)  # gate 0.5: the LLM's Yes/No moves P
    with torch.no_grad():
        router.network.gate.fill_(0.0)
        try:
            np.testing.assert_allclose(router.predict_proba(texts), direct, atol=1e-6)
        finally:
            router.network.gate.fill_(0.5)


def test_instructions_keep_their_head_and_tail(router, data):
    network = router.network
    long_text = max(data.validation.texts, key=len)
    ids = network.tokenizer.encode(long_text, add_special_tokens=False)
    assert len(ids) > SMALL.max_instruction_tokens
    kept = network.instruction_ids(long_text)[len(network.head_ids):-len(network.middle_ids)]
    assert kept == ids[:12] + ids[-12:]  # the options at the end survive the cut


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
    assert len(lora) == 2 * len(network.lora_targets) * network.llm.config.num_hidden_layers
    assert not any(p.requires_grad for n, p in network.llm.named_parameters()
                   if "lora_" not in n)


def test_save_pretrained_and_load_in_a_fresh_process(router, data, tmp_path):
    router.save_pretrained(tmp_path / "r")
    files = {p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*")
             if p.is_file()}
    assert {"config.json", "heads.safetensors", "evidence.safetensors", "registry.json",
            "aptitude_items.jsonl", "README.md", "router.json",
            "adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    adapter = json.loads((tmp_path / "r" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == router.config.base_model
    registry = json.loads((tmp_path / "r" / "registry.json").read_text())
    assert registry["models"] == router.models and registry["tasks"] == router.tasks
    items = [json.loads(line) for line in
             (tmp_path / "r" / "aptitude_items.jsonl").read_text().splitlines()]
    assert {i["id"] for i in items} == set(data.aptitude.item_ids)
    assert all(i["grading"] == "multiple_choice" and i["answer"] in i["choices"]
               for i in items)  # MMLU-Pro keys travel with the router
    texts = data.validation.texts[:3]
    expected = router.predict_proba(texts)
    script = ("import json, sys; from capsat.routers import Router; "
              "r = Router.load(sys.argv[1]); "
              "print(json.dumps(r.predict_proba(json.loads(sys.argv[2])).tolist()))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r"), json.dumps(texts)],
                         capture_output=True, text=True, check=True, timeout=300)
    np.testing.assert_allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])),
                               expected, atol=1e-6)


def test_saved_config_must_be_complete(router, tmp_path):
    router.save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["lora_r"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lora_r"):
        CapsatRouter.from_pretrained(tmp_path / "r")


def test_a_router_saved_before_the_difficulty_loads_as_it_was(data, tmp_path):
    """A config saved before ``difficulty_k`` existed (v3.2) loads with the difficulty off,
    which is how that router behaves, and scores as a router saved with it off."""
    router = _encoder_only(data, difficulty_k=0)
    router.save_pretrained(tmp_path / "now")
    config = json.loads((tmp_path / "now" / "config.json").read_text())
    for name in ("difficulty_k", "difficulty_weight"):
        del config[name]
    (tmp_path / "now" / "config.json").write_text(json.dumps(config))
    old = CapsatRouter.from_pretrained(tmp_path / "now")
    assert (old.config.difficulty_k, old.config.difficulty_weight) == (0, 0.0)
    texts = data.validation.texts[:4]
    np.testing.assert_allclose(old.predict_proba(texts), router.predict_proba(texts),
                               atol=1e-6)


def test_a_router_saved_before_the_shared_difficulty_reads_each_candidate_s_own(data,
                                                                             tmp_path):
    """A config saved before ``shared_difficulty`` loads with it off: its start moves each
    candidate by the difficulty of the pool without itself, as it was trained and picked."""
    own = _encoder_only(data, difficulty_k=4, difficulty_weight=1.0, shared_difficulty=False)
    shared = _encoder_only(data, difficulty_k=4, difficulty_weight=1.0)
    assert shared.config.shared_difficulty  # the default now
    own.save_pretrained(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    del config["shared_difficulty"]
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    old = CapsatRouter.from_pretrained(tmp_path / "r")
    assert old.config.shared_difficulty is False
    texts = data.validation.texts[:6]
    np.testing.assert_allclose(old.predict_proba(texts), own.predict_proba(texts), atol=1e-6)
    assert np.abs(shared.predict_proba(texts) - own.predict_proba(texts)).max() > 1e-3


def test_onboarding_adds_a_model_from_its_aptitude_results(router, data, tmp_path):
    router.save_pretrained(tmp_path / "r")
    loaded = CapsatRouter.from_pretrained(tmp_path / "r")
    texts = data.validation.texts[:3]
    before = loaded.predict_proba(texts)
    model = data.split.train_models[0]
    results = {q: float(data.table.scores.at[q, model]) for q in data.aptitude.item_ids}
    candidate = loaded.onboard("twin-a", results, price={"input_price": 0.1})
    loaded.onboard("twin-b", results)
    assert candidate.kind == "onboarded" and candidate.onboarding["items"] == len(results)
    assert len(candidate.fitted_ability) == SMALL.irt_dim
    after = loaded.predict_proba(texts)
    # Onboarding touches no other candidate; the same answers give the same scores.
    np.testing.assert_allclose(after[:, :len(before[0])], before, atol=1e-6)
    np.testing.assert_allclose(after[:, -1], after[:, -2], atol=1e-6)
    # A model that got everything wrong on the test ranks below one that got it all right.
    loaded.onboard("all-wrong", {q: 0.0 for q in results})
    loaded.onboard("all-right", {q: 1.0 for q in results})
    p = loaded.predict_proba(texts, ["all-wrong", "all-right"])
    assert (p[:, 0] < p[:, 1]).all()
    with pytest.raises(DataError, match="already a candidate"):
        loaded.onboard("twin-a", results)
    with pytest.raises(DataError, match="not on this router.s aptitude items"):
        loaded.onboard("other", {"no/such/item": 1.0})
    outside = next(q for q in loaded.bank.item_ids if q not in data.aptitude.item_ids)
    with pytest.raises(DataError, match="not on this router.s aptitude items"):
        loaded.onboard("other", {**results, outside: 1.0})  # checked against the test
    loaded.onboard("wider", {**results, outside: 1.0}, scope="bank")  # an experiment's own
    with pytest.raises(DataError, match="in \\[0, 1\\]"):
        loaded.onboard("other", {q: 2.0 for q in results})
    with pytest.warns(WeakAptitudeInput):
        loaded.onboard("by-task", {t: 0.5 for t in loaded.tasks})
    with pytest.raises(DataError, match="no accuracy for task"):
        loaded.onboard("partial", {loaded.tasks[0]: 0.5})
    loaded.save_pretrained(tmp_path / "o")
    again = CapsatRouter.from_pretrained(tmp_path / "o")
    assert again.candidates["twin-a"].price == {"input_price": 0.1}
    np.testing.assert_allclose(again.predict_proba(texts, ["all-wrong", "all-right"]), p,
                               atol=1e-6)


def test_capsat_in_the_eval_harness_and_explain(router, data, small_data_path, tmp_path):
    router.fitted_on = Provenance.from_tables(data.table.subset(data.bank.item_ids),
                                              data.validation, split="query", seed=0)
    router.save_pretrained(tmp_path / "r")
    result = evaluate(small_data_path, "query", f"best_single,capsat:{tmp_path / 'r'},capsat",
                      aptitude_items=12)
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
                                                 f"capsat:{tmp_path / 'unknown'}",
                       aptitude_items=12)
    assert "fitted on 2 of these test queries" in refused.skipped["capsat:leaky"]
    assert "--allow-unknown-provenance" in refused.skipped["capsat:unknown"]
    assert not refused.routers
    allowed = evaluate(small_data_path, "query", f"capsat:{tmp_path / 'unknown'}",
                       allow_unknown_provenance=True, aptitude_items=12)
    assert set(allowed.routers) == {"capsat:unknown"}
    with pytest.raises(DataError, match="--allow-unknown-provenance"):
        explain(str(tmp_path / "unknown"), small_data_path, max_queries=20)
    with pytest.raises(DataError, match="fitted on 2 of the queries to explain"):
        explain(str(tmp_path / "leaky"), small_data_path, max_queries=0)
    report = explain(str(tmp_path / "r"), small_data_path, max_queries=20, out_dir=tmp_path / "x")
    summary = report["summary"]
    assert summary["queries"] == 20 and set(summary["spearman_difficulty_vs_accuracy_per_task"])
    assert list(report["abilities"].index) == router.models
    assert {"ability_score", "fitted_ability_score", "kind"} <= set(report["abilities"])
    assert (tmp_path / "x" / "abilities.csv").exists() and (tmp_path / "x" / "queries.csv").exists()


def test_capsat_onboards_held_out_models_in_a_model_split(data, tiny_base, small_data_path,
                                                          tmp_path):
    """A model split: the harness onboards the held-out model into CapSAT from its aptitude
    results alone, and the reference best single model is picked on those results too."""
    held = prepare(TrainConfig(data=small_data_path, split="model", held_out=["gemma-7b"],
                               k_per_task=3), progress=False)
    assert "gemma-7b" not in held.train_models
    router = make_router(held, tiny_base)
    router.fitted_on = Provenance.from_tables(held.table.subset(held.bank.item_ids,
                                                                held.train_models),
                                              split="model", seed=0)
    router.save_pretrained(tmp_path / "r")
    result = evaluate(small_data_path, "model", f"capsat:{tmp_path / 'r'},aptitude_prior,knn",
                      held_out=["gemma-7b"], aptitude_items=12)
    assert result.models == ["gemma-7b"] and "capsat:r" in result.routers
    assert "aptitude_prior" in result.routers and "cannot onboard" in result.skipped["knn"]
    assert result.reference["chosen_on"] == "aptitude results"


def test_save_pretrained_is_atomic(router, data, tmp_path, monkeypatch):
    """A save that fails half-way (here: writing the heads) leaves the old router complete
    and loadable, and no half-written folder beside it."""
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
                               expected, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_onboard_cli_writes_where_it_is_told(router, data, tmp_path, capsys):
    """Onboarding a shipped or hub router needs --out (never ./default); user mistakes are
    one-line errors naming the flag."""
    router.save_pretrained(tmp_path / "r")
    aptitude = tmp_path / "aptitude.json"
    model = data.split.train_models[0]
    aptitude.write_text(json.dumps({q: float(data.table.scores.at[q, model])
                                    for q in data.aptitude.item_ids}))
    args = ["onboard", "--name", "newcomer", "--aptitude", str(aptitude)]
    assert cli_main([*args, "--router", "default"]) == 2
    assert "--out" in capsys.readouterr().err
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
    out = tmp_path / "items.jsonl"
    assert cli_main(["aptitude", "export", str(tmp_path / "r"), str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(data.aptitude.item_ids)


def test_bad_inputs(router):
    with pytest.raises(TypeError):
        router.predict_proba("one string")
    with pytest.raises(TypeError, match="text"):
        router.network.instruction_ids(42)
    with pytest.raises(ValueError, match="n_soft_tokens"):
        CapsatConfig(n_soft_tokens=0)
    with pytest.raises(ValueError, match="quantization"):
        CapsatConfig(quantization="3bit")
    with pytest.raises(DataError, match="CapSAT"):
        CapsatRouter.from_pretrained(__file__.rsplit("/", 1)[0])


def test_qlora_option_is_built_and_refused_without_cuda(data, tiny_base):
    """The GPU path: 4-bit NF4 weights through bitsandbytes (QLoRA). Here (no CUDA) it is
    refused with what to do instead, before anything loads."""
    from capsat.capsat_model.base_llm import quantization_config

    config = quantization_config("4bit")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert quantization_config("none") is None
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the device run exercises QLoRA")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        CapsatRouter.create(dataclasses.replace(SMALL, base_model=tiny_base,
                                                quantization="4bit"),
                            data.bank, data.train_models, data.tasks)


def test_encoder_only_router_needs_no_llm(data, tmp_path):
    """use_llm: false loads no LLM (the ablation, and a fast router)."""
    config = dataclasses.replace(SMALL, use_llm=False, base_model="no/such/model")
    router = CapsatRouter.create(config, data.bank, data.train_models, data.tasks,
                                 aptitude=data.aptitude, aptitude_items=data.aptitude_items)
    assert router.network.llm is None
    probs = router.predict_proba(data.validation.texts[:3])
    router.save_pretrained(tmp_path / "r")
    assert not (tmp_path / "r" / "adapter").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no base model lookup
        np.testing.assert_allclose(Router.load(tmp_path / "r").predict_proba(
            data.validation.texts[:3]), probs, atol=1e-6)


def test_a_router_whose_gate_is_zero_is_saved_without_its_llm(router, data, tmp_path,
                                                              monkeypatch):
    """Gate 0 (an LLM stage never trained or not kept): the LLM adds nothing, so the router
    can be saved without it and scores the same without loading it."""
    texts = data.validation.texts[:3]
    with pytest.raises(ValueError, match="gate is 0.5"):  # the fixture's gate: it matters
        router.save_pretrained(tmp_path / "refused", without_llm=True)
    assert not (tmp_path / "refused").exists()
    with torch.no_grad():
        router.network.gate.fill_(0.0)
    try:
        assert router.llm_adds_nothing
        expected = router.predict_proba(texts)  # through the LLM
        router.save_pretrained(tmp_path / "r", without_llm=True)
    finally:
        with torch.no_grad():
            router.network.gate.fill_(0.5)
    assert router.config.use_llm and router.network.llm is not None  # itself unchanged
    assert not (tmp_path / "r" / "adapter").exists()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["use_llm"] is False
    assert "not saved" in (tmp_path / "r" / "README.md").read_text()

    def no_llm(*args, **kwargs):
        raise AssertionError("an encoder-only router loaded its LLM")

    monkeypatch.setattr("capsat.capsat_model.base_llm.load_base_llm", no_llm)
    loaded = Router.load(tmp_path / "r")
    assert loaded.network.llm is None and not loaded.llm_adds_nothing
    np.testing.assert_allclose(loaded.predict_proba(texts), expected, atol=1e-6)


def _encoder_only(data, **overrides) -> CapsatRouter:
    config = dataclasses.replace(SMALL, use_llm=False, base_model="no/such/model", **overrides)
    return CapsatRouter.create(config, data.bank, data.train_models, data.tasks,
                               aptitude=data.aptitude, aptitude_items=data.aptitude_items)


def test_a_labelled_instruction_reads_its_own_task(data):
    """Untrained (zero read-out), the router's answer is the per-task prior. With the query's
    task label it is exactly the candidate's shrunk accuracy on that task (worked by hand from
    the bank); without one, the task head's blend; read_task_labels false ignores labels."""
    from capsat.capsat_model.evidence import PRIOR_WEIGHT
    from capsat.routers import Queries

    texts, tasks = data.validation.texts[:6], data.validation.tasks[:6]
    router = _encoder_only(data)
    labelled = router.predict_proba(Queries(texts, tasks=tasks))
    bank = data.bank
    overall = np.nanmean(bank.outcomes, axis=1)
    expected = np.zeros_like(labelled)
    for i, task in enumerate(tasks):
        on_task = bank.tasks == data.tasks.index(task)
        right = np.nansum(bank.outcomes[:, on_task], axis=1)
        count = (~np.isnan(bank.outcomes[:, on_task])).sum(axis=1)
        expected[i] = (right + PRIOR_WEIGHT * overall) / (count + PRIOR_WEIGHT)
    np.testing.assert_allclose(labelled, expected, atol=1e-5)
    unlabelled = router.predict_proba(Queries(texts))
    assert np.abs(unlabelled - labelled).max() > 1e-3
    # A task the router does not know falls back to the task head, as no label does.
    np.testing.assert_allclose(router.predict_proba(Queries(texts, tasks=["no such"] * 6)),
                               unlabelled, atol=1e-6)
    blind = _encoder_only(data, read_task_labels=False)
    np.testing.assert_allclose(blind.predict_proba(Queries(texts, tasks=tasks)),
                               blind.predict_proba(Queries(texts)), atol=1e-6)


def test_the_start_can_shrink_a_task_residual_toward_the_overall_one(data):
    """With start_prior_shrink s, the untrained router's answer on a labelled query is the
    pool's success on the task (the candidate left out) plus the candidate's residual there,
    shrunk toward its overall residual by s pseudo-counts, worked by hand from the bank; a
    huge s ranks the candidates of every query of a task alike, by overall residual; a kNN
    start adds its items' residuals, shrunk toward that."""
    from capsat.routers import Queries

    s = 5.0
    texts, tasks = data.validation.texts[:6], data.validation.tasks[:6]
    queries = Queries(texts, tasks=tasks)
    probs = _encoder_only(data, start_prior_shrink=s).predict_proba(queries)
    bank = data.bank
    success = bank.pool_success()
    level = bank.task_means(success, len(data.tasks))
    has = ~np.isnan(bank.outcomes)
    residual = np.where(has, bank.outcomes - success, 0.0)
    overall = residual.sum(axis=1) / has.sum(axis=1)
    expected = np.zeros_like(probs)
    for i, task in enumerate(tasks):
        t = data.tasks.index(task)
        on_task = has & (bank.tasks == t)[None]
        shrunk = ((residual * on_task).sum(axis=1) + s * overall) / (on_task.sum(axis=1) + s)
        expected[i] = level[:, t] + shrunk
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert np.abs(probs - _encoder_only(data).predict_proba(queries)).max() > 1e-3
    flat = _encoder_only(data, start_prior_shrink=1e6).predict_proba(queries)
    np.testing.assert_allclose(flat - level[:, [data.tasks.index(t) for t in tasks]].T,
                               np.broadcast_to(overall, flat.shape), atol=1e-3)
    # With a kNN start too: the k most similar items' residuals, shrunk toward that.
    k, w = 4, 3.0
    knn = _encoder_only(data, start_prior_shrink=s, start_knn=k, start_knn_weight=w)
    cosine = knn.embed(Queries(texts)).astype(np.float32) @ bank.embeddings.T
    for j in range(bank.n_candidates):
        items = np.flatnonzero(has[j])
        for i, task in enumerate(tasks):
            top = items[np.argsort(-cosine[i, items], kind="stable")[:k]]
            t = data.tasks.index(task)
            on_task = has[j] & (bank.tasks == t)
            shrunk = (residual[j, on_task].sum() + s * overall[j]) / (on_task.sum() + s)
            expected[i, j] = level[j, t] + (residual[j, top].sum() + w * shrunk) / (k + w)
    np.testing.assert_allclose(knn.predict_proba(queries), expected, atol=1e-4)
    with pytest.raises(ValueError, match="start_prior_shrink"):
        dataclasses.replace(SMALL, start_prior_shrink=-1.0)


def test_the_direct_logit_can_start_at_a_knn_shrunk_toward_the_task(data):
    """With start_knn k, the untrained router's answer is (outcomes of the candidate's k
    evidence items most similar to the instruction + w x its accuracy on the task) / (k + w),
    worked by hand from the bank."""
    from capsat.capsat_model.evidence import PRIOR_WEIGHT
    from capsat.routers import Queries

    k, w = 5, 3.0
    texts, tasks = data.validation.texts[:6], data.validation.tasks[:6]
    router = _encoder_only(data, start_knn=k, start_knn_weight=w)
    probs = router.predict_proba(Queries(texts, tasks=tasks))
    bank = data.bank
    cosine = router.embed(Queries(texts)).astype(np.float32) @ bank.embeddings.T
    expected = np.zeros_like(probs)
    for j in range(bank.n_candidates):
        has = ~np.isnan(bank.outcomes[j])
        overall = bank.outcomes[j, has].mean()
        for i, task in enumerate(tasks):
            on_task = has & (bank.tasks == data.tasks.index(task))
            per_task = ((bank.outcomes[j, on_task].sum() + PRIOR_WEIGHT * overall)
                        / (on_task.sum() + PRIOR_WEIGHT))
            items = np.flatnonzero(has)
            top = items[np.argsort(-cosine[i, items], kind="stable")[:k]]
            expected[i, j] = (bank.outcomes[j, top].sum() + w * per_task) / (k + w)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert np.abs(probs - _encoder_only(data).predict_proba(
        Queries(texts, tasks=tasks))).max() > 1e-3


def test_an_onboarded_model_has_a_start_of_its_own(data, tmp_path):
    """With onboarded_start, a candidate read from a few items (one onboarded from its
    aptitude answers, or any read from ``evidence_items`` only) starts as that start says,
    and a known model as the known start says, each worked out by the router with that start
    alone; the start is saved and loaded with the router."""
    from capsat.routers import Queries

    queries = Queries(data.validation.texts[:6], tasks=data.validation.tasks[:6])
    core = sorted(data.aptitude.item_ids)
    bank = data.bank
    results = {q: float(bank.outcomes[0, bank.index[q]]) for q in core}
    known = dict(start_knn=5, start_knn_weight=3.0)
    routers = {}
    for name, overrides in (("both", dict(known, onboarded_start=[0, 2.0, 5.0])),
                            ("known", known),
                            ("onboarded", dict(start_knn=0, start_knn_weight=2.0,
                                               start_prior_shrink=5.0))):
        own = dataclasses.replace(data, bank=copy.deepcopy(data.bank))  # onboarding adds a row
        routers[name] = _encoder_only(own, **overrides)
        routers[name].onboard("newcomer", results)
    probs = {name: r.predict_proba(queries) for name, r in routers.items()}
    m = len(data.train_models)
    np.testing.assert_allclose(probs["both"][:, :m], probs["known"][:, :m], atol=1e-6)
    np.testing.assert_allclose(probs["both"][:, m], probs["onboarded"][:, m], atol=1e-6)
    assert np.abs(probs["known"][:, m] - probs["onboarded"][:, m]).max() > 1e-3
    # Every candidate read from its core items only is read as onboarded.
    for r in routers.values():
        r.evidence_items = core
    np.testing.assert_allclose(routers["both"].predict_proba(queries),
                               routers["onboarded"].predict_proba(queries), atol=1e-6)
    routers["both"].evidence_items = None
    routers["both"].save_pretrained(tmp_path / "r")
    again = CapsatRouter.from_pretrained(tmp_path / "r")
    assert again.config.onboarded_start == [0, 2.0, 5.0]
    np.testing.assert_allclose(again.predict_proba(queries), probs["both"], atol=1e-6)
    with pytest.raises(ValueError, match="onboarded_start"):
        dataclasses.replace(SMALL, onboarded_start=[3, 0.0, 1.0])


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_the_start_reads_the_query_s_difficulty_for_the_whole_pool(data, ridge, shared):
    """With difficulty_weight b, the untrained router's logit moves by b x (logit of the
    pool's success on the query's k most similar bank items, shrunk toward its task's, minus
    logit of its task's), worked by hand from the bank; with ``difficulty_ridge``, by the mean
    of that and the same for a ridge regression's reading of the query (the pool's success
    net of the task's on the bank items' embeddings). A model onboarded from 12 aptitude
    answers reads the whole pool on every bank item, not its own evidence alone. With
    ``shared_difficulty`` every candidate reads that whole pool (one shift per query: no
    routing changes); without, the pool leaves a known candidate out."""
    from scipy.special import logit

    from capsat.capsat_model.evidence import DIFFICULTY_PRIOR_WEIGHT
    from capsat.routers import Queries

    k, b = 4, 1.5
    texts, tasks = data.validation.texts[:6], data.validation.tasks[:6]
    queries = Queries(texts, tasks=tasks)
    # Each router its own bank: onboarding adds a row to it.
    plain, shifted = (_encoder_only(dataclasses.replace(data, bank=copy.deepcopy(data.bank)),
                                    difficulty_k=k, difficulty_weight=w,
                                    difficulty_ridge=ridge, shared_difficulty=shared)
                      for w in (0.0, b))
    model = data.split.train_models[0]
    results = {q: float(data.table.scores.at[q, model]) for q in data.aptitude.item_ids}
    for router in (plain, shifted):
        router.onboard("newcomer", results)
    moved = logit(shifted.predict_proba(queries)) - logit(plain.predict_proba(queries))
    bank = data.bank
    embedded = plain.embed(Queries(texts)).astype(np.float64)
    cosine = embedded.astype(np.float32) @ bank.embeddings.T
    nearest = np.argsort(-cosine, axis=1, kind="stable")[:, :k]
    whole = bank.pool_sum / bank.pool_count
    pools = [whole if shared else (bank.pool_sum - bank.outcomes[j]) / (bank.pool_count - 1)
             for j in range(bank.n_candidates)] + [whole]  # j left out, unless shared
    x = bank.embeddings.astype(np.float64)
    expected = np.zeros_like(moved)
    for j, pool in enumerate(pools):
        levels = np.array([pool[bank.tasks == t].mean() for t in range(len(data.tasks))])
        if ridge:
            weights = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]),
                                      x.T @ (pool - levels[bank.tasks]))
        for i, task in enumerate(tasks):
            on_task = levels[data.tasks.index(task)]
            near = (pool[nearest[i]].sum() + DIFFICULTY_PRIOR_WEIGHT * on_task) / (
                k + DIFFICULTY_PRIOR_WEIGHT)
            difficulty = logit(near) - logit(on_task)
            if ridge:
                read = np.clip(on_task + embedded[i] @ weights, 0.01, 0.99)
                difficulty = (difficulty + logit(read) - logit(on_task)) / 2
            expected[i, j] = b * difficulty
    assert moved.shape[1] == len(data.train_models) + 1
    np.testing.assert_allclose(moved, expected, atol=1e-4)
    assert np.abs(expected).max() > 0.05  # the queries differ in difficulty
    # The newcomer is the trained model it copies, read from 12 answers: its difficulty is
    # that model's with the model put back into the pool, not one read from 12 items.
    assert (np.abs(expected[:, -1] - expected[:, 0]).max() > 1e-3) is not shared
    # Shared, the shift is the query's: the order of the candidates is the start's.
    np.testing.assert_array_equal(np.ptp(expected, axis=1) == 0, shared)


def test_known_models_read_from_their_aptitude_items_alone(data):
    """``evidence_items`` limits every candidate's evidence to those bank items (training's
    validation of known models as if onboarded); an item outside the bank is refused."""
    router = _encoder_only(data)
    texts = data.validation.texts[:5]
    whole = router.predict_proba(texts)
    items = sorted(data.aptitude.item_ids)
    router.evidence_items = items
    evidence = router.evidence()
    # The pool is the whole bank (the query's difficulty reads every item), the evidence
    # only those items.
    assert evidence.mask.shape[1] == len(router.bank.item_ids)
    assert int(evidence.mask.any(dim=0).sum()) == len(items)
    assert (evidence.mask.sum(dim=1) == len(items)).all()
    assert np.abs(router.predict_proba(texts) - whole).max() > 1e-3
    router.evidence_items = None
    np.testing.assert_allclose(router.predict_proba(texts), whole, atol=1e-7)
    with pytest.raises(DataError, match="not in the evidence bank"):
        router.bank.evidence(items=["no-such-item"])


@pytest.mark.slow
def test_real_smollm2_router_scores_and_round_trips(data, tmp_path):
    """The embedded SmolLM2-135M-Instruct: converted once, LoRA on its real module names."""
    router = CapsatRouter.create(CapsatConfig(max_instruction_tokens=48,
                                              instruction_head_tokens=24),
                                 data.bank, data.train_models, data.tasks,
                                 aptitude=data.aptitude, aptitude_items=data.aptitude_items)
    assert router.network.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    texts = data.validation.texts[:2]
    probs = router.predict_proba(texts)
    assert probs.shape == (2, len(router.models)) and np.isfinite(probs).all()
    router.save_pretrained(tmp_path / "r")
    np.testing.assert_allclose(Router.load(tmp_path / "r").predict_proba(texts), probs,
                               atol=1e-6)


def test_onboarded_candidates_can_read_the_difficulty_with_a_weight_of_their_own(data,
                                                                                  tmp_path):
    """With onboarded_difficulty_weight, a candidate onboarded from its aptitude answers moves
    by that weight times the difficulty and a known one by difficulty_weight, each as a
    router with that one weight reads it; the weight is saved and loaded with the router, and
    None reads every candidate with difficulty_weight."""
    from capsat.routers import Queries

    queries = Queries(data.validation.texts[:6], tasks=data.validation.tasks[:6])
    model = data.split.train_models[0]
    results = {q: float(data.table.scores.at[q, model]) for q in data.aptitude.item_ids}
    probs, routers = {}, {}
    for name, overrides in (("both", dict(difficulty_weight=0.5,
                                          onboarded_difficulty_weight=2.0)),
                            ("known", dict(difficulty_weight=0.5)),
                            ("onboarded", dict(difficulty_weight=2.0))):
        own = dataclasses.replace(data, bank=copy.deepcopy(data.bank))  # onboarding adds a row
        routers[name] = _encoder_only(own, difficulty_k=4, **overrides)
        routers[name].onboard("newcomer", results)
        probs[name] = routers[name].predict_proba(queries)
    m = len(data.train_models)
    np.testing.assert_allclose(probs["both"][:, :m], probs["known"][:, :m], atol=1e-6)
    np.testing.assert_allclose(probs["both"][:, m], probs["onboarded"][:, m], atol=1e-6)
    assert np.abs(probs["known"][:, m] - probs["onboarded"][:, m]).max() > 1e-3
    routers["both"].save_pretrained(tmp_path / "r")
    again = CapsatRouter.from_pretrained(tmp_path / "r")
    assert again.config.onboarded_difficulty_weight == 2.0
    np.testing.assert_allclose(again.predict_proba(queries), probs["both"], atol=1e-6)
