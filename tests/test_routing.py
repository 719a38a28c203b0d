"""Batch routing over instruction logs (capsat.routing), on logs built from real MMLU-Pro rows.

The router is kNN fitted on the shipped ``mmlu_small`` slice; the logs repeat its real
questions (with their real outcome labels), and the broken logs are real rows corrupted on
purpose.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aptitude_fixtures import tiny_router_dir  # noqa: F401  (a fixture)

from capsat.cli import main as cli_main
from capsat.capsat_model.router import CapsatRouter
from capsat.routers import Queries, make_router
from capsat.routing import (
    Policy,
    RouteConfig,
    frontier,
    last_user_turn,
    run_route,
    threshold_choice,
)
from capsat.routing.job import work_dir_of
from data_builders.errors import DataError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def knn_dir(mmlu_small, tmp_path_factory):
    router = make_router("knn", k=10).fit(mmlu_small)
    return str(router.save(tmp_path_factory.mktemp("knn")))


@pytest.fixture(scope="module")
def prices_file(mmlu_small, tmp_path_factory):
    """Real prices: each model's mean output length (characters) on the slice."""
    path = tmp_path_factory.mktemp("prices") / "prices.json"
    means = mmlu_small.costs.mean()
    path.write_text(json.dumps({"cost_unit": "output_chars",
                                **{m: float(v) for m, v in means.items()}}))
    return str(path), {m: float(v) for m, v in means.items()}


def labelled_rows(table, n: int | None = None) -> list[dict]:
    """One log row per query (cycling through the table for n > len): id, instruction and
    the real outcome labels."""
    ids, texts = table.query_ids, table.texts
    n = len(ids) if n is None else n
    rows = []
    for i in range(n):
        q = ids[i % len(ids)]
        row = {"id": f"{q}#{i}", "instruction": texts[i % len(ids)]}
        for m in table.models:
            row["score|" + m] = float(table.scores.at[q, m])
            row["cost|" + m] = float(table.costs.at[q, m])
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows, opener=open) -> str:
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def route(knn_dir, src, out, **options) -> dict:
    config = RouteConfig(router=knn_dir, input=str(src), output=str(out), progress=False,
                         **options)
    summary = run_route(config)
    return summary.to_json()


# ------------------------------------------------------------------ kill and resume
def test_sigkill_then_resume_equals_uninterrupted_run(mmlu_small, knn_dir, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 1200))
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "capsat.cli", "route", "--router", knn_dir, "--input", log,
               "--output", str(out), "--chunk-size", "2", "--id-field", "id", "--no-progress"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    parts = work_dir_of(RouteConfig(output=str(out)))
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("chunk-*.parquet"))) >= 40:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + \
        proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("chunk-*.parquet")))
    assert 40 <= done < 600 and not out.exists()

    summary = route(knn_dir, log, out, chunk_size=2, id_field="id", resume=True)
    reference = tmp_path / "reference.jsonl"
    route(knn_dir, log, reference, chunk_size=2, id_field="id")
    assert out.read_bytes() == reference.read_bytes()
    rows = read_jsonl(out)
    assert [r["line"] for r in rows] == list(range(1, 1201))  # nothing lost, nothing twice
    assert [r["id"] for r in rows] == [f"{mmlu_small.query_ids[i % 240]}#{i}"
                                       for i in range(1200)]
    assert summary["routed"] == 1200 and summary["rejected"] == 0
    assert not parts.exists()  # the work directory is removed after a successful merge


def test_resume_refuses_parts_of_another_job(mmlu_small, knn_dir, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 20))
    out = tmp_path / "out.jsonl"
    route(knn_dir, log, out, chunk_size=5, keep_parts=True)
    with pytest.raises(DataError, match="chunk_size"):
        route(knn_dir, log, out, chunk_size=7, resume=True)


# ------------------------------------------------------------------ bad rows
def test_broken_lines_go_to_the_errors_file(mmlu_small, knn_dir, tmp_path):
    rows = labelled_rows(mmlu_small, 30)
    lines = [json.dumps(r) for r in rows]
    broken = {
        3: ("truncated_json", lines[2][:57]),  # cut mid-string: not "invalid control char"
        26: ("invalid_json", lines[25].replace(",", ",,", 1)),
        5: ("missing_field", json.dumps({k: v for k, v in rows[4].items()
                                         if k != "instruction"})),
        8: ("empty_instruction", json.dumps({**rows[7], "instruction": "   "})),
        11: ("non_text_instruction", json.dumps({**rows[10], "instruction": 42})),
        14: ("too_long", json.dumps({**rows[13], "instruction": rows[13]["instruction"] * 40})),
        17: ("not_an_object", json.dumps([rows[16]["instruction"]])),
        20: ("blank_line", ""),
        23: ("bad_label", json.dumps({**rows[22], "score|gemma-7b": "yes"})),
    }
    for line, (_, text) in broken.items():
        lines[line - 1] = text
    log = write_jsonl(tmp_path / "broken.jsonl", lines)
    out = tmp_path / "out.jsonl"
    summary = route(knn_dir, log, out, chunk_size=4, max_chars=5000)
    errors = read_jsonl(str(out) + ".errors.jsonl")
    assert {e["line"]: e["reason"] for e in errors} == {k: v[0] for k, v in broken.items()}
    assert [e["field"] for e in errors if e["line"] == 5] == ["instruction"]
    assert [e["field"] for e in errors if e["line"] == 23] == ["score|gemma-7b"]
    routed = read_jsonl(out)
    assert [r["line"] for r in routed] == [i for i in range(1, 31) if i not in broken]
    assert "truncated" in [e["message"] for e in errors if e["line"] == 3][0]
    assert summary["rows_in"] == 30 and summary["routed"] == 21 and summary["rejected"] == 9
    assert summary["counts_add_up"]
    assert sum(summary["rejected_by_reason"].values()) == 9
    assert json.loads(Path(str(out) + ".summary.json").read_text())["routed"] == 21

    with pytest.raises(DataError) as err:
        route(knn_dir, log, tmp_path / "strict.jsonl", chunk_size=4, max_chars=5000,
              strict=True)
    assert err.value.line == 3 and err.value.file == log
    # the CLI reports it as an error naming file and line, exit status 2
    status = cli_main(["route", "--router", knn_dir, "--input", log, "--output",
                       str(tmp_path / "cli.jsonl"), "--strict", "--no-progress"])
    assert status == 2


# ------------------------------------------------------------------ chat messages
def test_chat_messages_route_the_last_user_turn(mmlu_small, knn_dir, tmp_path):
    texts = mmlu_small.texts
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"instruction": texts[i]} for i in range(6)])
    chats = [
        {"messages": [{"role": "user", "content": texts[0]}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": texts[50]},
                      {"role": "assistant", "content": "B"},
                      {"role": "user", "content": texts[1]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": texts[2]}]}]},
        {"messages": [{"role": "system", "content": "x"},
                      {"role": "user", "content": texts[3]}]},
        {"messages": [{"role": "system", "content": "no user here"}]},
        {"messages": [{"role": "user", "content": texts[4]}]},
        {"messages": [{"role": "user", "content": texts[5]}]},
    ]
    log = write_jsonl(tmp_path / "chat.jsonl", chats)
    out, ref = tmp_path / "chat_out.jsonl", tmp_path / "plain_out.jsonl"
    summary = route(knn_dir, log, out, field="messages")
    route(knn_dir, plain, ref)
    assert [r["p"] for r in read_jsonl(out)] == [r["p"] for r in read_jsonl(ref)]
    assert [e["reason"] for e in read_jsonl(str(out) + ".errors.jsonl")] == ["no_user_turn"]
    assert summary["chat"] == {"rows_with_system_prompt_ignored": 2,
                               "rows_with_earlier_turns_ignored": 1}
    text, problem, had_system, earlier = last_user_turn("not a list")
    assert text is None and problem == "bad_messages"


# ------------------------------------------------------------------ task labels
def test_a_task_field_routes_each_row_with_its_label(mmlu_small, knn_dir, tiny_router_dir,
                                                     tmp_path):
    texts, tasks = mmlu_small.texts[:4], list(mmlu_small.tasks[:4])
    # the same texts, labelled, unlabelled (missing, null, blank) and with an unknown label
    rows = ([{"instruction": t, "task": k} for t, k in zip(texts, tasks)]
            + [{"instruction": texts[0]}, {"instruction": texts[1], "task": None},
               {"instruction": texts[2], "task": "  "},
               {"instruction": texts[3], "task": "astrology"},
               {"instruction": texts[0], "task": 7}])
    log = write_jsonl(tmp_path / "tasks.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = route(tiny_router_dir, log, out, task_field="task")
    router = CapsatRouter.from_pretrained(tiny_router_dir)
    models = list(router.models)
    sent = texts + texts[:3] + [texts[3]]
    labels = tasks + [None, None, None, "astrology"]
    expected = router.predict_proba(Queries(sent, tasks=labels), models)
    got = np.array([[r["p"][m] for m in models] for r in read_jsonl(out)])
    assert np.allclose(got, expected, atol=2e-6)
    # a label moves the router: a labelled text is not scored as its unlabelled copy
    assert not np.allclose(got[:3], got[4:7], atol=1e-4)
    assert np.allclose(got[4:8], router.predict_proba(Queries(texts), models), atol=2e-6)
    assert [(e["line"], e["reason"], e["field"]) for e in
            read_jsonl(str(out) + ".errors.jsonl")] == [(9, "bad_task", "task")]
    assert summary["task_labels"] == {"field": "task", "rows_with_task": 5,
                                      "rows_with_unknown_task": 1}
    assert "task_labels" not in route(tiny_router_dir, log, tmp_path / "plain.jsonl")
    # a router that ignores task labels refuses the field instead of dropping it silently
    with pytest.raises(DataError) as err:
        route(knn_dir, log, tmp_path / "knn.jsonl", task_field="task")
    assert err.value.field == "task_field" and "does not read task labels" in str(err.value)


# ------------------------------------------------------------------ formats
def test_gzip_csv_and_parquet_inputs_give_the_same_routing(mmlu_small, knn_dir, tmp_path):
    rows = labelled_rows(mmlu_small, 25)
    plain = write_jsonl(tmp_path / "log.jsonl", rows)
    zipped = write_jsonl(tmp_path / "log.jsonl.gz", rows, gzip.open)
    with gzip.open(tmp_path / "log.csv.gz", "wt", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "log.parquet", row_group_size=7)

    job = run_route(RouteConfig(router=knn_dir, input=str(plain),
                                output=str(tmp_path / "out.jsonl"), progress=False,
                                chunk_size=10, id_field="id"))
    reference = job.to_json()
    expected = read_jsonl(tmp_path / "out.jsonl")
    # The summary sets the routed accuracy beside always using the best single model.
    best = reference["best_single"]
    assert best["realised_accuracy"] == pytest.approx(
        np.mean([row["score|" + best["model"]] for row in rows]))
    assert f"(always {best['model']}: accuracy {best['realised_accuracy']:.4g}" in job.format()
    route(knn_dir, zipped, tmp_path / "out_gz.jsonl.gz", chunk_size=10, id_field="id")
    with gzip.open(tmp_path / "out_gz.jsonl.gz", "rt") as fh:
        assert [json.loads(line) for line in fh] == expected

    route(knn_dir, tmp_path / "log.csv.gz", tmp_path / "out.csv", chunk_size=10,
          id_field="id")
    with open(tmp_path / "out.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [g["id"] for g in got] == [e["id"] for e in expected]
    # CSV lines are where each record starts in the file (the header is line 1; quoted
    # questions span several lines)
    starts, line = [], 2
    for row in rows:
        starts.append(line)
        buffer = io.StringIO()
        csv.DictWriter(buffer, fieldnames=list(rows[0])).writerow(row)
        line += buffer.getvalue().count("\n")
    assert [int(g["line"]) for g in got] == starts and starts[-1] > 26
    assert [g["model"] for g in got] == [e["model"] for e in expected]

    parquet = route(knn_dir, tmp_path / "log.parquet", tmp_path / "out.parquet", chunk_size=10,
                    id_field="id")
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [t["model"] for t in table] == [e["model"] for e in expected]
    first = expected[0]["p"]
    assert {m: round(table[0]["p|" + m], 6) for m in first} == first
    assert parquet["realised"]["accuracy"] == reference["realised"]["accuracy"]

    route(knn_dir, tmp_path / "log.parquet", tmp_path / "as.jsonl", chunk_size=10,
          output_format="jsonl")
    assert [r["model"] for r in read_jsonl(tmp_path / "as.jsonl")] == \
        [e["model"] for e in expected]


# ------------------------------------------------------------------ policies
def test_policies_behave_as_defined(mmlu_small, knn_dir, prices_file, tmp_path):
    prices_path, price = prices_file
    models = list(price)
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small))

    def run(policy):
        out = tmp_path / f"{policy.replace(':', '_')}.jsonl"
        summary = route(knn_dir, log, out, policy=policy, prices=prices_path, chunk_size=64)
        return summary, read_jsonl(out)

    best, rows = run("max-accuracy")
    assert all(r["model"] == max(r["p"], key=r["p"].get) for r in rows)
    assert all(r["expected_cost"] == pytest.approx(price[r["model"]], rel=1e-5) for r in rows)

    threshold = 0.45
    _, rows = run(f"threshold:{threshold}")
    cleared_some = 0
    for r in rows:
        clearing = [m for m in models if r["p"][m] >= threshold]
        if clearing:
            cleared_some += 1
            assert r["model"] == min(clearing, key=lambda m: (price[m], -r["p"][m]))
        else:
            assert r["model"] == max(r["p"], key=r["p"].get)
    assert 0 < cleared_some < len(rows)  # both branches of the rule are exercised

    free, _ = run("tradeoff:0")
    stingy, rows = run("tradeoff:1000")
    assert free["share_per_model"] == best["share_per_model"]
    assert {r["model"] for r in rows} == {min(price, key=price.get)}

    full_spend, cheapest_spend = best["expected_total_cost"], stingy["expected_total_cost"]
    accuracies = []
    for share in (0.25, 0.5, 0.75):
        budget = cheapest_spend + share * (full_spend - cheapest_spend)
        summary, _ = run(f"budget:{budget}")
        assert summary["budget"]["feasible"]
        assert summary["budget"]["spend"] <= budget + 1e-9
        assert summary["expected_total_cost"] == pytest.approx(summary["budget"]["spend"])
        accuracies.append(summary["expected_accuracy"])
    assert accuracies == sorted(accuracies) and accuracies[0] < best["expected_accuracy"]
    summary, _ = run(f"budget:{0.9 * cheapest_spend}")  # below the all-cheapest spend
    assert not summary["budget"]["feasible"]
    with pytest.raises(DataError, match="budget"):
        Policy.parse("budget:-1")


def test_threshold_choice_ties_and_no_clear():
    probs = np.array([[0.9, 0.7, 0.7], [0.2, 0.3, 0.1]])
    costs = np.array([[5.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    # row 0: two cheapest clear 0.6 at equal cost -> the first; row 1: none clears -> max P
    assert threshold_choice(probs, costs, 0.6).tolist() == [1, 1]


def test_unknown_candidates_and_missing_prices_are_clear_errors(mmlu_small, knn_dir,
                                                                tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 5))
    with pytest.raises(DataError, match="gpt-9"):
        route(knn_dir, log, tmp_path / "o.jsonl", candidates=["gemma-7b", "gpt-9"])
    bad_prices = tmp_path / "prices.json"
    bad_prices.write_text(json.dumps({"gemma-7b": 1.0}))
    with pytest.raises(DataError) as err:
        route(knn_dir, log, tmp_path / "o.jsonl", policy="tradeoff:0.1",
              prices=str(bad_prices))
    assert err.value.file == str(bad_prices) and err.value.field is not None
    with pytest.raises(DataError, match="needs prices"):
        route(knn_dir, log, tmp_path / "o.jsonl", policy="threshold:0.5")


def test_named_router_fits_the_train_part_by_default(mmlu_small, small_data_path, tmp_path,
                                                     capsys):
    """Item 1: a named router is fitted on the train part unless --fit-part all, and the
    summary says which; fitting on every part flags the realised figures as in-sample."""
    from data_builders.experiment import prepare_experiment

    test_part = mmlu_small.subset(list(prepare_experiment(mmlu_small, seed=0).split.test))
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(test_part))
    summary = route("best_single", log, tmp_path / "o.jsonl", fit_data=small_data_path,
                    policy="tradeoff:0.0001")
    fit = summary["router"]["fit"]
    assert fit["fit_part"] == "train" and fit["test_part_held_out"]
    assert fit["fit_queries"] < len(mmlu_small)
    assert summary["prices"]["source"].startswith("mean cost per call")
    assert summary["best_single"]["chosen_by"].startswith("best accuracy on the router's "
                                                          "fitting data")
    realised = summary["realised"]
    assert realised["rows_seen_in_fitting"] == 0 and realised["warning"] is None
    assert cli_main(["route", "--router", "best_single", "--fit-data", small_data_path,
                     "--input", log, "--output", str(tmp_path / "c.jsonl"),
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fitted here on the train part" in printed and "WARNING" not in printed

    everything = route("best_single", log, tmp_path / "all.jsonl", fit_data=small_data_path,
                       fit_part="all")
    assert everything["router"]["fit"]["fit_part"] == "all"
    assert everything["realised"]["rows_seen_in_fitting"] == len(test_part)
    assert "IN-SAMPLE" in everything["realised"]["warning"]
    assert cli_main(["route", "--router", "best_single", "--fit-data", small_data_path,
                     "--fit-part", "all", "--input", log, "--output",
                     str(tmp_path / "c2.jsonl"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    realised_line = [line for line in printed.splitlines() if line.startswith("realised")][0]
    assert "WARNING: IN-SAMPLE" in realised_line and "--fit-part all" in realised_line


def test_router_without_provenance_has_its_realised_figures_withheld(mmlu_small, knn_dir,
                                                                     tmp_path):
    """Item 2: no record of the fitting data, no realised figures, unless the user says so."""
    unknown = tmp_path / "unknown"
    make_router("knn", k=10).fit(mmlu_small).save(unknown)
    meta = json.loads((unknown / "router.json").read_text())
    meta["fitted_on"] = None
    (unknown / "router.json").write_text(json.dumps(meta))
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 12))
    withheld = route(str(unknown), log, tmp_path / "w.jsonl")
    assert "accuracy" not in withheld["realised"]
    assert "withheld" in withheld["realised"]["warning"]
    assert "best_single" not in withheld
    allowed = route(str(unknown), log, tmp_path / "a.jsonl", allow_unknown_provenance=True)
    assert allowed["realised"]["accuracy"] is not None
    assert "no record" in allowed["realised"]["warning"]


def test_saved_and_fitted_routers_share_one_reference(mmlu_small, small_data_path, tmp_path):
    """Item 20: a saved router is compared with the same best single model as the router
    fitted here on the same data (its record's training accuracies)."""
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 12))
    fitted = route("knn", log, tmp_path / "f.jsonl", fit_data=small_data_path,
                   save_router=str(tmp_path / "saved"))
    saved = route(str(tmp_path / "saved"), log, tmp_path / "s.jsonl")
    assert saved["best_single"]["model"] == fitted["best_single"]["model"]
    assert saved["best_single"]["chosen_by"] == fitted["best_single"]["chosen_by"]
    record = json.loads((tmp_path / "saved" / "router.json").read_text())["fitted_on"]
    assert fitted["best_single"]["model"] == max(record["model_accuracy"],
                                                 key=record["model_accuracy"].get)


def test_a_run_that_fails_on_its_arguments_leaves_nothing(knn_dir, mmlu_small, tmp_path):
    """Item 21 (and 14): a bad policy is refused before anything is fitted or written; a
    policy that needs prices the router lacks leaves no parts folder behind."""
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small, 12))
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match="needs prices"):
        route(knn_dir, log, out, policy="budget:50")
    assert not work_dir_of(RouteConfig(output=str(out))).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    started = time.perf_counter()
    with pytest.raises(DataError, match="budget needs a number") as err:
        route("knn", log, out, policy="budget:lots", fit_data="mmlu_pro")
    assert err.value.field == "policy" and time.perf_counter() - started < 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


# ------------------------------------------------------------------ frontier
def test_frontier_sweeps_and_plots(mmlu_small, knn_dir, prices_file, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", labelled_rows(mmlu_small))
    result = frontier(RouteConfig(router=knn_dir, input=log, prices=prices_file[0],
                                  progress=False), "budget", tmp_path / "fr", n_points=6)
    assert (tmp_path / "fr" / "frontier.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "fr" / "frontier.json").read_text())
    assert saved["axes"] == {"accuracy": "realised", "cost": "realised"}
    assert set(saved["single_models"]) == set(mmlu_small.models)
    for point in result["points"]:
        assert point["spend"] <= point["knob"] * (1 + 1e-9)
    expected = [p["expected_accuracy"] for p in result["points"]]
    assert expected == sorted(expected)
    # realised single-model accuracy is the model's real mean score on the log
    gemma = saved["single_models"]["gemma-7b"]["realised_accuracy"]
    assert gemma == pytest.approx(mmlu_small.scores["gemma-7b"].mean())


# ------------------------------------------------------------------ scale-out
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_match_one(mmlu_small, knn_dir, tmp_path):
    rows = labelled_rows(mmlu_small, 300)
    lines = [json.dumps(r) for r in rows]
    lines[10] = "{not json"
    log = write_jsonl(tmp_path / "log.jsonl", lines)
    one = tmp_path / "one.jsonl"
    route(knn_dir, log, one, chunk_size=16, id_field="id")
    two = tmp_path / "two.jsonl"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--main_process_port", str(_free_port()),
               "-m", "capsat.cli", "route", "--router", knn_dir, "--input", log,
               "--output", str(two), "--chunk-size", "16", "--id-field", "id",
               "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    assert Path(str(two) + ".errors.jsonl").read_bytes() == \
        Path(str(one) + ".errors.jsonl").read_bytes()
    summary = json.loads(Path(str(two) + ".summary.json").read_text())
    assert summary["timing"]["processes"] == 2 and summary["routed"] == 299


def test_budget_prices_come_from_a_capsat_registry_s_mean_cost():
    """Item 16: the default router's registry holds each candidate's mean cost per call on
    its training data; the budget policy reads it without --prices."""
    from types import SimpleNamespace

    from capsat.routing.prices import from_router

    router = SimpleNamespace(candidates={
        "a": SimpleNamespace(price={"mean_cost_per_call": 700.0, "cost_unit": "output_chars"}),
        "b": SimpleNamespace(price={"mean_cost_per_call": 300.0, "cost_unit": "output_chars"})})
    prices = from_router(router, ["b", "a"], 256)
    assert prices.unit == "output_chars" and list(prices.per_call) == [300.0, 700.0]
    router.candidates["a"].price = {"input_price": 1.0, "output_price": 2.0}
    assert from_router(router, ["a", "b"], 256) is None  # mixed kinds: none silently guessed
