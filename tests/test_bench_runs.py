"""bench/capsat_runs.py --pair: two runs' CapSAT paired over the same test queries."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("capsat_runs", REPO / "bench/capsat_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
