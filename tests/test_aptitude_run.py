"""capsat aptitude run: items file, grading, resumable runs, onboarding. Real MMLU-Pro items
(tests/fixtures, see its README); answers from the stub backend here, from the real SmolLM2 in
test_serving_real.py."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aptitude_fixtures import tiny_router_dir  # noqa: F401  (a fixture)
from servers import ServerThread
from stub_backend import create_stub_app

from capsat.capsat_model.router import CapsatRouter
from capsat.cli import main as cli_main
from capsat.serving.aptitude_run import (
    AptitudeRun,
    extract_choice,
    first_per_task,
    grade,
    load_aptitude_items,
    run_aptitude,
)
from data_builders import DataError
from data_builders.aptitude import read_aptitude_items as read_items

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "mmlu_pro_aptitude_items.jsonl"
LETTERS = list("ABCDEFGHIJ")


def test_option_letters_are_read_robustly():
    cases = {"The answer is (C)": "C", "C) 42 apples": "C", "**C**": "C", "Answer: C": "C",
             "answer is **D**.": "D", "I think the answer is B.": "B", "(E) because": "E",
             "The correct option is F": "F", "J.": "J", "I": "I", "Answer:\nG": "G",
             "The answer is a mystery": None, "I don't know": None, "": None, "Z) nope": None,
             "A bird in the hand": None}
    for reply, letter in cases.items():
        assert extract_choice(reply, LETTERS) == letter, reply
    assert extract_choice("The answer is (H)", list("ABCD")) is None  # not an option here


def test_items_file_is_checked_with_line_and_field(tmp_path):
    items = read_items(FIXTURE)
    assert len(items) == 28 and len({i.task for i in items}) == 14
    assert all(i.answer in i.choices and f"\n{i.answer}) " in i.question for i in items)
    good = json.loads(FIXTURE.read_text().splitlines()[0])
    for change, line, field in (({"answer": "Z"}, 2, "answer"), ({"grading": "vibes"}, 2,
                                                                  "grading"),
                                ({"choices": None}, 2, "choices"), ({"extra": 1}, 2, "extra")):
        path = tmp_path / "items.jsonl"
        second = {**good, "id": "x2", **change}
        path.write_text(json.dumps(good) + "\n" + json.dumps(second) + "\n")
        with pytest.raises(DataError) as info:
            read_items(path)
        assert (info.value.line, info.value.field) == (line, field), info.value
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match="also on line 1"):
        read_items(path)
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(DataError) as info:
        read_items(path)
    assert info.value.line == 2
    missing = {k: v for k, v in good.items() if k != "task"}
    path.write_text(json.dumps(missing) + "\n")
    with pytest.raises(DataError) as info:
        read_items(path)
    assert info.value.field == "task"
    with pytest.raises(DataError, match="ships no aptitude_items.jsonl"):
        load_aptitude_items(tmp_path)
    assert grade(items[0], f"The answer is ({items[0].answer})") == (1.0, items[0].answer)
    assert grade(items[0], "no idea") == (0.0, None)


def test_run_grades_onboards_and_resumes(tmp_path, tiny_router_dir, capsys):
    items = load_aptitude_items(tiny_router_dir)
    assert len(items) == 8
    app = create_stub_app()
    out = tmp_path / "run"
    # A run killed after three items, the third line torn by the crash.
    lines = [json.dumps({"id": i.id, "task": i.task, "reply": "(A)", "extracted": "A",
                         "answer": i.answer, "score": float(i.answer == "A"), "parsed": True,
                         "finish_reason": "stop", "seconds": 0.1}) for i in items[:3]]
    with ServerThread(app) as stub:
        run = AptitudeRun(stub.url + "/v1", "answer:C", str(out), concurrency=2)
        out.mkdir()
        # The same run's record (what the killed run wrote first).
        from capsat.serving.aptitude_run import _fingerprint

        (out / "run.json").write_text(json.dumps(_fingerprint(run, items)))
        (out / "replies.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
        summary = run_aptitude(tiny_router_dir, run, name="stub-c")
        assert len(app.state.calls) == 6  # the two whole lines were not asked again
        assert summary["resumed"] == 2 and summary["asked_now"] == 6
        replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in replies) == sorted(i.id for i in items)
        expected = {}
        for item in items:
            score = float(item.answer == "A") if item.id in {i.id for i in items[:2]} else \
                float(item.answer == "C")
            expected.setdefault(item.task, []).append(score)
        aptitude = {t: sum(v) / len(v) for t, v in sorted(expected.items())}
        assert summary["aptitude"] == pytest.approx(aptitude)
        assert json.loads((out / "aptitude.json").read_text()) == pytest.approx(aptitude)
        onboarded = CapsatRouter.from_pretrained(out / "router")
        assert onboarded.models[-1] == "stub-c"
        assert onboarded.candidates["stub-c"].onboarding == {"items": 8,
                                                             "source": "item results"}
        # Onboarded per item: its evidence is exactly its graded replies.
        assert onboarded.evidence_results("stub-c") == {r["id"]: r["score"] for r in replies}
        assert "stub-c" not in CapsatRouter.from_pretrained(tiny_router_dir).models  # a copy
        # The same folder never takes another model's run.
        with pytest.raises(DataError, match="another run"):
            run_aptitude(tiny_router_dir, dataclasses.replace(run, model="answer:D"))
        # From the command line, with the first item of each task only.
        assert cli_main(["aptitude", "run", "--router", tiny_router_dir, "--endpoint",
                         stub.url + "/v1", "--model", "answer:B", "--items-per-task", "1",
                         "--out", str(tmp_path / "cli")]) == 0
    printed = capsys.readouterr().out
    assert "time per item" in printed and "math" in printed and "onboarded into" in printed
    assert len(first_per_task(items, 1)) == 4


def test_a_killed_run_continues_where_it_stopped(tmp_path, tiny_router_dir):
    app = create_stub_app()
    out = tmp_path / "run"
    with ServerThread(app) as stub:
        command = [sys.executable, "-m", "capsat.cli", "aptitude", "run", "--router",
                   tiny_router_dir, "--endpoint", stub.url + "/v1", "--model", "answer:C:0.4",
                   "--concurrency", "1", "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        replies = out / "replies.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if replies.exists() and len(replies.read_bytes().splitlines()) >= 2:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        done = len(replies.read_bytes().splitlines())
        assert 2 <= done < 8
        asked_before = len(app.state.calls)
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"{done} already answered" in result.stdout
    ids = [json.loads(line)["id"] for line in replies.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 8
    # At most the one item in flight at the kill was asked twice.
    assert len(app.state.calls) - asked_before == 8 - done
