"""The command line as a user meets it: imports, options, errors, hub commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capsat.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent


def test_import_capsat_ls_and_validate_load_no_torch(tmp_path):
    """Item 9: `import capsat`, `capsat ls` and `capsat validate` never import torch."""
    csv = tmp_path / "tiny.csv"
    csv.write_text("query_id,query,task,a,b\nq1,What is 2+2?,math,1,0\nq2,Capital of Peru?,geo,"
                   "0,1\n")
    script = ("import sys, io, contextlib, capsat, capsat.cli\n"
              "assert 'torch' not in sys.modules, 'import'\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              "    assert capsat.cli.main(['ls', '-v']) == 0\n"
              "    assert capsat.cli.main(['validate', sys.argv[1]]) == 0\n"
              "assert 'torch' not in sys.modules, 'ls/validate'\n")
    subprocess.run([sys.executable, "-c", script, str(csv)], check=True, cwd=REPO,
                   timeout=120)


def test_ls_verbose_prints_options_that_work(capsys):
    """Item 13: every option shown is one `--router-args` accepts, with its real default."""
    from capsat.cli import parse_router_args

    assert cli_main(["ls", "routers", "-v"]) == 0
    out = capsys.readouterr().out
    assert "_MISSING_TYPE" not in out and "knn.k_grid=[1, 3, 5, 10, 20, 40, 80, 160]" in out
    options = [line.strip().split("  ")[0] for line in out.splitlines()
               if line.startswith("      ") and "=" in line.split()[0]]
    assert len(options) > 30
    for option in options:
        name = option.split(".", 1)[0]
        if name != "capsat":
            parse_router_args([option])  # the printed default parses back
    assert "capsat train" in out  # CapSAT's options are `capsat train`'s


def test_router_args_set_options_and_bad_ones_name_the_flag(mmlu_small, capsys, tmp_path):
    from capsat.cli import parse_router_args

    assert parse_router_args(["knn.k=50,knn.k_grid=[5,10]", "irt.dim=8"]) == {
        "knn": {"k": 50, "k_grid": [5, 10]}, "irt": {"dim": 8}}
    path = str(mmlu_small.save(tmp_path / "small.parquet"))
    assert cli_main(["eval", "--data", path, "--routers", "best_single,knn", "--router-args",
                     "knn.k_grid=[3],knn.prior_weight_grid=[1.0]", "--no-plots", "--out",
                     str(tmp_path / "o")]) == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["routers"]["knn"]["chosen_hyperparameters"]["k"] == 3
    capsys.readouterr()
    for bad, expected in (("knn.k=many", "k takes a int"), ("knn.nope=1", "no option 'nope'"),
                          ("knn", "NAME.OPTION=VALUE"), ("capsat.lora_r=2", "capsat train")):
        assert cli_main(["eval", "--data", path, "--routers", "knn", "--router-args", bad]) == 2
        err = capsys.readouterr().err
        assert "--router-args" in err and expected in err, err


def test_eval_takes_validate_s_file_options(tmp_path, mmlu_small, capsys):
    """Item 13: an outcome file without a task column evaluates with --default-task."""
    wide = mmlu_small.scores.copy()
    wide.insert(0, "query", mmlu_small.texts)
    path = tmp_path / "no_task.csv"
    wide.reset_index().to_csv(path, index=False)
    assert cli_main(["eval", "--data", str(path), "--routers", "best_single", "--no-plots"]) == 2
    assert "default_task" in capsys.readouterr().err
    assert cli_main(["eval", "--data", str(path), "--routers", "best_single", "--no-plots",
                     "--layout", "wide", "--default-task", "mixed"]) == 0
    assert "best_single" in capsys.readouterr().out


def test_errors_name_the_flag_the_user_typed(capsys, tmp_path):
    """Item 14: `field 'fit_data'` is reported as --fit-data, in one line."""
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"instruction": "What is 2+2?"}) + "\n")
    assert cli_main(["route", "--router", "knn", "--input", str(log), "--output",
                     str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--fit-data" in err and "fit_data" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o.jsonl.parts").exists()


def test_mistyped_router_path_fails_at_once(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"instruction": "What is 2+2?"}) + "\n")
    (tmp_path / "runs").mkdir()
    os.chdir(tmp_path)
    for spec in ("runs/knn", "./knn", str(tmp_path / "nope")):
        started = time.perf_counter()
        assert cli_main(["route", "--router", spec, "--input", str(log), "--output",
                         str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
        assert "no such router folder" in capsys.readouterr().err
        assert time.perf_counter() - started < 2.0


def test_push_and_pull_fail_clearly_offline(mmlu_small, tmp_path, capsys, monkeypatch):
    """Item 17: without a reachable hub, a one-line error saying what to do."""
    from capsat.routers import make_router

    router_dir = make_router("best_single").fit(mmlu_small).save(tmp_path / "r")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    assert cli_main(["push", str(router_dir), "someone/router"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not push" in err and "network" in err and len(err.splitlines()) == 1
    assert cli_main(["pull", "someone/router", str(tmp_path / "pulled")]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not download" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "pulled").exists()
    assert cli_main(["push", str(tmp_path / "missing"), "someone/router"]) == 2
    assert "no such router folder" in capsys.readouterr().err
    assert cli_main(["push", str(router_dir), "not a repo id"]) == 2
    assert "owner/name" in capsys.readouterr().err


def test_train_help_lists_every_field_with_dashes(capsys):
    """Item 19: `capsat train --help` lists every overridable field, as flags are spelled."""
    import dataclasses

    from capsat.capsat_model.config import CapsatConfig
    from train.config import TrainConfig

    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    out = capsys.readouterr().out
    for klass in (CapsatConfig, TrainConfig):
        for f in dataclasses.fields(klass):
            assert "--" + f.name.replace("_", "-") in out, f.name
            assert f.metadata["help"].split()[0] in out
