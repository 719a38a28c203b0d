"""``capsat aptitude run``: give a router's aptitude items to a model behind an OpenAI-compatible
endpoint, grade its replies, and onboard it into a copy of the router.

Items file (``aptitude_items.jsonl`` in a CapSAT router folder, or ``--items FILE``): one JSON
object per line::

    {"id": "mmlu_pro/123", "task": "math", "question": "<the full question, options included>",
     "choices": ["A", "B", ...] or null, "answer": "C", "grading": "multiple_choice"}

Gradings: ``multiple_choice`` (the option letter is read from the reply: "The answer is (C)",
"C) ...", "**C**", "Answer: C"; a reply with no readable letter scores 0 and is counted as
unparseable) and ``exact_match`` (the reply, trimmed and case-folded, equals the answer).
Items without a reference answer (grading ``none``) cannot be run.

``OUT/replies.jsonl`` gets one line per finished item (reply, extracted answer, score,
seconds), appended whole (``decisions.AppendLog``): a killed run started again with the same
arguments skips the items already there. ``OUT/run.json`` records what the run is (endpoint,
model, items), so a folder is never resumed with another model. Then the per-task accuracies
go to ``OUT/aptitude.json`` and the router with the new candidate to ``OUT/router`` (written
atomically).

The model is onboarded from its per-item scores (``router.onboard``: item id -> score).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from data_builders.aptitude import AptitudeItem, read_aptitude_items
from data_builders.atomic import write_json
from data_builders.errors import DataError

from ..routers.base import help_field
from .decisions import AppendLog, read_log

ITEMS_FILE = "aptitude_items.jsonl"
INSTRUCTION = "Answer with the letter of the correct option."


def load_aptitude_items(router_dir: str | Path) -> list[AptitudeItem]:
    """The aptitude items a router folder ships (``aptitude_items.jsonl``)."""
    path = Path(router_dir) / ITEMS_FILE
    if not path.is_file():
        raise DataError(f"this router ships no {ITEMS_FILE}; give the items with --items",
                        file=str(router_dir))
    return read_aptitude_items(path)


def first_per_task(items: Sequence[AptitudeItem], n: int | None) -> list[AptitudeItem]:
    """The first ``n`` items of every task, in file order (all with ``n`` None or 0)."""
    if not n:
        return list(items)
    counts: dict[str, int] = defaultdict(int)
    chosen = []
    for item in items:
        if counts[item.task] < n:
            counts[item.task] += 1
            chosen.append(item)
    return chosen


# ------------------------------------------------------------------ grading
_LETTER = r"\(?\**\s*([A-Z])\s*\**\)?"
# Tried in order; the first pattern that finds a letter among the choices wins.
_PATTERNS = [
    # "The answer is (C)", "Answer: C", "answer is **D**" (letters are capitals: "the answer is
    # a mystery" reads no letter)
    re.compile(r"(?i:answer)\s*(?:is|:|=)?\s*(?:(?i:option)\s*)?[:\-]?\s*" + _LETTER
               + r"(?![A-Za-z])"),
    re.compile(r"^\s*\(?\**([A-Z])\**\)?(?:[).:,\]]|\s*$|\*\*)"),  # "C) ...", "C.", "C"
    re.compile(r"\*\*\(?([A-Z])\)?\*\*"),  # "**C**" anywhere
    re.compile(r"\(([A-Z])\)"),  # "(C)" anywhere
    re.compile(r"(?i:option|choice)\s*(?:is\s*)?[:\-]?\s*\(?([A-Z])(?![A-Za-z])"),  # "option F"
]


def extract_choice(reply: str, choices: Sequence[str]) -> str | None:
    """The option letter a reply gives, or None when none can be read."""
    allowed = set(choices)
    for pattern in _PATTERNS:
        for match in pattern.finditer(reply or ""):
            letter = match.group(1).upper()
            if letter in allowed:
                return letter
    return None


def grade(item: AptitudeItem, reply: str) -> tuple[float, str | None]:
    """(score, the answer read from the reply; None: unparseable)."""
    if item.grading == "multiple_choice":
        extracted = extract_choice(reply, item.choices)
    else:
        extracted = (reply or "").strip() or None
    if extracted is None:
        return 0.0, None
    same = extracted.casefold() == item.answer.strip().casefold()
    return float(same), extracted


def prompt_of(item: AptitudeItem) -> str:
    return f"{item.question}\n\n{INSTRUCTION}" if item.grading == "multiple_choice" else \
        item.question


# ------------------------------------------------------------------ onboarding
def per_task_accuracy(items: Sequence[AptitudeItem], scores: Mapping[str, float]
                      ) -> dict[str, float]:
    """What a person reads of the run: accuracy per task."""
    by_task: dict[str, list[float]] = defaultdict(list)
    for item in items:
        if item.id in scores:
            by_task[item.task].append(float(scores[item.id]))
    return {task: sum(values) / len(values) for task, values in sorted(by_task.items())}


# ------------------------------------------------------------------ the run
@dataclass
class AptitudeRun:
    """Where and how the items are asked."""

    endpoint: str = help_field("", "the endpoint's base URL, e.g. http://127.0.0.1:8001/v1")
    model: str = help_field("", "the endpoint's name of the model")
    out: str = help_field("", "folder for replies.jsonl, aptitude.json, summary.json, router/")
    api_key: str = help_field("unused", "the endpoint's key (local servers take any)")
    concurrency: int = help_field(4, "requests in flight")
    max_tokens: int = help_field(16, "reply length limit")
    timeout: float = help_field(120.0, "seconds per request")


def _fingerprint(run: AptitudeRun, items: Sequence[AptitudeItem]) -> dict:
    digest = hashlib.sha256(json.dumps([i.to_json() for i in items], sort_keys=True).encode())
    return {"endpoint": run.endpoint, "model": run.model, "max_tokens": run.max_tokens,
            "items": len(items), "items_sha256": digest.hexdigest()}


def _check_same_run(out: Path, fingerprint: dict) -> None:
    path = out / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != fingerprint:
            changed = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
            raise DataError(f"this folder holds another run (differs in {changed}); give "
                            f"another --out", file=str(path))
    else:
        write_json(path, fingerprint)


async def _ask(client, run: AptitudeRun, item: AptitudeItem) -> tuple[str, str | None, float]:
    started = time.perf_counter()
    reply = await client.chat.completions.create(
        model=run.model, messages=[{"role": "user", "content": prompt_of(item)}],
        max_tokens=run.max_tokens, temperature=0)
    choice = reply.choices[0]
    return choice.message.content or "", choice.finish_reason, time.perf_counter() - started


async def answer_items(run: AptitudeRun, items: Sequence[AptitudeItem], log: AppendLog,
                       progress=None) -> dict:
    """Ask every item (``concurrency`` at a time), appending each graded reply as it ends.
    Returns counts; failed items are not written, so a rerun asks them again."""
    import openai

    client = openai.AsyncOpenAI(base_url=run.endpoint, api_key=run.api_key,
                                timeout=run.timeout, max_retries=2)
    limit = asyncio.Semaphore(run.concurrency)
    failures: list[str] = []

    async def one(item: AptitudeItem) -> None:
        async with limit:
            try:
                reply, finish, seconds = await _ask(client, run, item)
            except openai.OpenAIError as err:
                failures.append(f"{item.id}: {type(err).__name__}: {err}"[:200])
                return
            score, extracted = grade(item, reply)
            log.append({"id": item.id, "task": item.task, "reply": reply,
                        "extracted": extracted, "answer": item.answer, "score": score,
                        "parsed": extracted is not None, "finish_reason": finish,
                        "seconds": round(seconds, 3)})
            if progress is not None:
                progress(item)

    try:
        await asyncio.gather(*(one(item) for item in items))
    finally:
        await client.close()
    return {"failed": failures}


def run_aptitude(router_spec: str, run: AptitudeRun, *, items_file: str | None = None,
                 items_per_task: int | None = None, name: str | None = None,
                 price: dict | None = None, replace: bool = False) -> dict:
    """The whole ``capsat aptitude run``: ask, grade, onboard, save. Returns the summary."""
    from ..routing.resolve import resolve_router

    folder = _router_folder(router_spec)
    items = read_aptitude_items(items_file) if items_file else load_aptitude_items(folder)
    ungradable = [i.id for i in items if not i.gradable]
    if ungradable:
        raise DataError(f"{len(ungradable)} item(s) have no reference answer to grade a reply "
                        f"against, e.g. {ungradable[:3]} (the router's data has no answer "
                        f"key): collect the model's scores yourself and use `capsat onboard`",
                        file=items_file or str(folder), field="answer")
    items = first_per_task(items, items_per_task)
    router = resolve_router(router_spec, progress=False).router
    if not router.can_onboard:
        raise DataError(f"a {router.name} router cannot onboard a model from aptitude results; "
                        f"use a CapSAT router", field="router")
    unknown = sorted({i.task for i in items} - set(router.tasks))
    if unknown:
        raise DataError(f"items of task(s) {unknown} the router does not have (its tasks: "
                        f"{router.tasks})", file=items_file or str(folder), field="task")
    name = name or run.model
    if name in router.models and not replace:
        raise DataError(f"{name!r} is already a candidate of the router; give --name or "
                        f"--replace", field="name")

    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, _fingerprint(run, items))
    replies_path = out / "replies.jsonl"
    with AppendLog(replies_path, fsync=True) as log:
        wanted = {i.id for i in items}
        done = {r["id"] for r in read_log(replies_path) if r.get("id") in wanted}
        pending = [i for i in items if i.id not in done]
        print(f"aptitude run: {len(items)} items ({len(done)} already answered in "
              f"{replies_path}, {len(pending)} to ask) on {run.endpoint} model {run.model}",
              flush=True)
        started = time.perf_counter()
        counts = asyncio.run(answer_items(run, pending, log))
        wall = time.perf_counter() - started
    replies = {r["id"]: r for r in read_log(replies_path) if r.get("id") in wanted}
    asked = len(pending) - len(counts["failed"])
    if counts["failed"]:
        raise DataError(f"{len(counts['failed'])} item(s) got no reply (e.g. "
                        f"{counts['failed'][0]}); run the same command again to ask them",
                        file=str(replies_path))
    scores = {item_id: r["score"] for item_id, r in replies.items()}
    router.onboard(name, scores, price=price, replace=replace)  # per item, as answered
    aptitude = per_task_accuracy(items, scores)
    write_json(out / "aptitude.json", aptitude)
    router.save(out / "router")
    this_run = [r["seconds"] for i, r in replies.items() if i not in done]
    summary = {"model": run.model, "name": name, "endpoint": run.endpoint,
               "items": len(items), "asked_now": asked, "resumed": len(done),
               "unparseable": sum(1 for r in replies.values() if not r["parsed"]),
               "aptitude": aptitude,
               "accuracy": sum(scores.values()) / len(scores),
               "wall_seconds": round(wall, 3),
               "wall_seconds_per_item": round(wall / asked, 3) if asked else None,
               "mean_call_seconds": round(sum(this_run) / len(this_run), 3) if this_run else None,
               "concurrency": run.concurrency, "router": str(out / "router"),
               "candidates": len(router.models)}
    write_json(out / "summary.json", summary)
    return summary


def _router_folder(spec: str) -> Path:
    if Path(spec).is_dir():
        return Path(spec)
    if spec == "default":
        from ..capsat_model.router import DEFAULT_ROUTER_DIR

        return DEFAULT_ROUTER_DIR
    return Path(spec)  # a hub id: its items come with --items
