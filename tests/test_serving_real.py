"""capsat serve and capsat aptitude run against a real OpenAI-compatible backend:
`transformers serve` running the embedded SmolLM2-135M-Instruct from its converted local
checkpoint, on localhost, offline. Slow: real generation on the CPU (replies of 8 tokens)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest
from aptitude_fixtures import tiny_router_dir  # noqa: F401  (a fixture)
from servers import ServerThread, free_port

from capsat import make_router
from capsat.capsat_model.base_llm import default_cache_dir, load_base_llm
from capsat.cli import main as cli_main
from capsat.serving.app import create_app
from capsat.serving.controller import Controller
from capsat.serving.decisions import read_log

REPO = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Name a primary colour."}]
#: `transformers serve` as its console script runs it.
TRANSFORMERS_CLI = ("import sys; from transformers.cli.transformers import main; "
                    "sys.argv[0] = 'transformers'; sys.exit(main())")

pytestmark = pytest.mark.slow


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited: {process.communicate()[1][-3000:]}")
        try:
            if httpx2.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"{url} did not come up")


@pytest.fixture(scope="module")
def smollm2():
    """(base URL, model name) of `transformers serve` over the converted SmolLM2 folder."""
    load_base_llm()  # converts the embedded GGUF once (into this session's cache)
    folder = str(default_cache_dir())
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", TRANSFORMERS_CLI, "serve", folder,
                                "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                "--dtype", "float32"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url + "/v1", folder
    finally:
        process.terminate()
        process.wait(timeout=30)


def backends_file(path: Path, smollm2, candidates) -> str:
    url, model = smollm2
    lines = ["models:"]
    for name in candidates:
        lines += [f"  {name}:", f"    base_url: {url}", f"    model: {model}",
                  "    input_price: 0.5", "    output_price: 1.5", "    timeout: 120"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_proxy_to_real_smollm2_plain_and_streamed(tmp_path, mmlu_small, smollm2):
    router = make_router("best_single").fit(mmlu_small)
    log = tmp_path / "decisions.jsonl"
    controller = Controller(router, backends_file(tmp_path / "b.yaml", smollm2, router.models),
                            decision_log=str(log))
    with ServerThread(create_app(controller)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="capsat", messages=PROMPT, max_tokens=8, temperature=0)
        reply = raw.parse()
        assert reply.choices[0].message.content.strip()
        assert 0 < reply.usage.completion_tokens <= 8
        assert raw.headers["x-capsat-model"] in router.models
        with client.chat.completions.with_streaming_response.create(
                model="capsat", messages=PROMPT, max_tokens=8, temperature=0,
                stream=True) as response:
            assert response.headers["x-capsat-model"] == raw.headers["x-capsat-model"]
            chunks = list(response.parse())
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    assert len(pieces) >= 2  # passed through chunk by chunk
    # Greedy decoding: the stream says what the plain reply said.
    assert "".join(pieces) == reply.choices[0].message.content
    plain, streamed = read_log(log)
    assert plain["status"] == streamed["status"] == "ok"
    usage = reply.usage
    assert plain["cost"] == pytest.approx((usage.prompt_tokens * 0.5
                                           + usage.completion_tokens * 1.5) / 1e6)


def test_aptitude_run_onboards_the_real_model(tmp_path, tiny_router_dir, smollm2, capsys):
    url, model = smollm2
    out = tmp_path / "aptitude"
    assert cli_main(["aptitude", "run", "--router", tiny_router_dir, "--endpoint", url,
                     "--model", model, "--name", "smollm2-135m", "--items-per-task", "1",
                     "--max-tokens", "8", "--concurrency", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "time per item" in printed and "onboarded into" in printed
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == 4 and all(r["reply"].strip() for r in replies)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall_seconds_per_item"] > 0 and summary["asked_now"] == 4
    from capsat.capsat_model.router import CapsatRouter

    onboarded = CapsatRouter.from_pretrained(out / "router")
    assert onboarded.models[-1] == "smollm2-135m"
    assert onboarded.candidates["smollm2-135m"].onboarding["items"] == 4
    assert onboarded.evidence_results("smollm2-135m") == {r["id"]: r["score"] for r in replies}


def test_capsat_serve_with_the_default_router(tmp_path, smollm2):
    from capsat.capsat_model.router import DEFAULT_ROUTER_DIR

    candidates = json.loads((DEFAULT_ROUTER_DIR / "registry.json").read_text())["models"][:3]
    port = free_port()
    log = tmp_path / "decisions.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "capsat.cli", "serve", "--router", "default", "--backends",
         backends_file(tmp_path / "b.yaml", smollm2, candidates), "--port", str(port),
         "--decision-log", str(log), "--log-prompts"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="capsat", messages=PROMPT,
                                                                max_tokens=8, temperature=0)
        assert raw.parse().choices[0].message.content.strip()
        route = httpx2.post(url + "/v1/route", json={"messages": PROMPT}, timeout=60).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    chosen, p = raw.headers["x-capsat-model"], float(raw.headers["x-capsat-p-correct"])
    assert chosen in candidates and 0 < p < 1
    # The CapSAT scores differ across candidates, and the route endpoint says the same.
    assert len(set(route["probabilities"].values())) > 1
    assert route["model"] == chosen and route["probabilities"][chosen] == pytest.approx(p)
    records = list(read_log(log))
    assert [r["endpoint"] for r in records] == ["chat", "route"]
    assert records[0]["instruction"] == PROMPT[0]["content"]
