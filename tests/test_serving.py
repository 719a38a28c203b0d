"""capsat serve and the Controller, over real HTTP: a router fitted on real MMLU-Pro outcomes,
the stub backend (tests/stub_backend.py) for answers and faults, the official openai client.
The real SmolLM2 backend is in test_serving_real.py (slow)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import numpy as np
import openai
import pytest
from servers import ServerThread, free_port
from stub_backend import create_stub_app

from capsat import make_router
from capsat.cli import main as cli_main
from capsat.routing.policies import Policy
from capsat.serving.app import create_app
from capsat.serving.budget import SpendBudget
from capsat.serving.config import ServeConfig, load_backends
from capsat.serving.controller import Affinity, Controller, RequestError, parse_policy
from capsat.serving.decisions import AppendLog, read_log
from data_builders import DataError

REPO = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "What is the derivative of x**2?"}]


@pytest.fixture(scope="module")
def best_dir(mmlu_small, tmp_path_factory):
    """A saved best_single router (no embeddings: constant, known order) on real outcomes."""
    router = make_router("best_single").fit(mmlu_small)
    return str(router.save(tmp_path_factory.mktemp("routers") / "best_single"))


@pytest.fixture(scope="module")
def ranked(best_dir):
    """The candidates by P(correct), best first, as the router scores every request."""
    from capsat.routers import Router

    router = Router.load(best_dir)
    probs = router.predict_proba(["any"])[0]
    return [router.models[j] for j in np.argsort(-probs, kind="stable")]


@pytest.fixture(scope="module")
def stub():
    app = create_stub_app()
    with ServerThread(app) as server:
        server.calls = app.state.calls
        yield server


def write_backends(path: Path, url: str, backends: dict, timeout: float = 5.0) -> str:
    """``backends``: candidate -> (the stub's model name, cost per call)."""
    lines = ["models:"]
    for name, (model, cost) in backends.items():
        lines += [f"  {name}:", f"    base_url: {url}/v1", f"    model: '{model}'",
                  f"    cost_per_call: {cost}", f"    timeout: {timeout}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def echo_backends(tmp_path, stub, ranked, **overrides) -> str:
    spec = {m: ("echo", 1.0) for m in ranked}
    spec.update(overrides)
    return write_backends(tmp_path / "backends.yaml", stub.url, spec)


def client_for(server, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=kwargs.pop("api_key", "none"),
                         max_retries=0, **kwargs)


# ------------------------------------------------------------------ backends file
def test_backends_file_errors_name_line_and_key(tmp_path, ranked):
    good = ranked[0]

    def error_of(text: str) -> str:
        path = tmp_path / "backends.yaml"
        path.write_text(text)
        with pytest.raises(DataError) as info:
            load_backends(str(path), ranked)
        return str(info.value)

    head = f"models:\n  {good}:\n    base_url: http://127.0.0.1:9/v1\n    model: m\n"
    message = error_of(head + "    cost_per_call: 1\n    timeout: -3\n")
    assert "backends.yaml, line 6" in message and f"'models.{good}.timeout'" in message
    message = error_of(head + "    cost_per_call: 1\n    tiemout: 3\n")
    assert "line 6" in message and "unknown key" in message and "tiemout" in message
    message = error_of(head + "    input_price: 1\n")
    assert "line 2" in message and "output_price" in message
    message = error_of("models:\n  gpt-17:\n    base_url: http://x/v1\n    model: m\n")
    assert "line 2" in message and "does not know candidate 'gpt-17'" in message
    message = error_of(head + "    cost_per_call: 1\n    api_key_env: CAPSAT_TEST_NO_SUCH_VAR\n")
    assert "line 6" in message and "CAPSAT_TEST_NO_SUCH_VAR is not set" in message
    message = error_of(head.replace("http://127.0.0.1:9/v1", "127.0.0.1:9") + "    cost_per_call: 1\n")
    assert "line 3" in message and "base_url" in message
    assert "line 2" in error_of("models:\n  a: b: c\n")  # invalid YAML: the parser's line
    path = tmp_path / "ok.yaml"
    path.write_text(head + "    input_price: 2\n    output_price: 4\n")
    backends = load_backends(str(path), ranked)
    # Token prices: ceil(400 chars / 4) = 100 input tokens, 256 assumed output tokens.
    assert backends.expected_costs(400)[0] == pytest.approx((100 * 2 + 256 * 4) / 1e6)
    assert backends.call_cost(good, 10, 20, 400) == pytest.approx((10 * 2 + 20 * 4) / 1e6)


def test_safe_defaults_need_a_key_beyond_localhost(monkeypatch):
    with pytest.raises(DataError, match="api-key-env"):
        ServeConfig(router="r", backends="b", host="0.0.0.0").check()
    with pytest.raises(DataError, match="CAPSAT_TEST_KEY is not set"):
        ServeConfig(router="r", backends="b", host="0.0.0.0", api_key_env="CAPSAT_TEST_KEY").check()
    monkeypatch.setenv("CAPSAT_TEST_KEY", "s3cret")
    ServeConfig(router="r", backends="b", host="0.0.0.0", api_key_env="CAPSAT_TEST_KEY").check()
    ServeConfig(router="r", backends="b").check()  # localhost needs none
    assert cli_main(["serve", "--router", "r", "--backends", "b", "--host", "0.0.0.0"]) == 2


def test_policy_in_the_model_field():
    default = Policy("max-accuracy")
    assert parse_policy("capsat", Policy("threshold", 0.5)) == Policy("threshold", 0.5)
    assert parse_policy("capsat:threshold=0.7", default) == Policy("threshold", 0.7)
    assert parse_policy("capsat:tradeoff=0.001", default) == Policy("tradeoff", 0.001)
    assert parse_policy("capsat:max-accuracy", default) == default
    for bad in ("gpt-4o", "capsat:threshold=2", "capsat:budget=5", "capsat:fastest", 7):
        with pytest.raises(RequestError) as info:
            parse_policy(bad, default)
        assert info.value.param == "model" and info.value.status == 400


# ------------------------------------------------------------------ proxying
def test_proxy_routes_forwards_streams_and_logs(tmp_path, best_dir, ranked, stub):
    log = tmp_path / "decisions.jsonl"
    controller = Controller(best_dir, echo_backends(tmp_path, stub, ranked),
                            decision_log=str(log), log_prompts=True)
    probs = controller.router.predict_proba(["x"], controller.models)[0]
    with ServerThread(create_app(controller)) as proxy:
        client = client_for(proxy)
        raw = client.chat.completions.with_raw_response.create(
            model="capsat", messages=QUESTION, max_tokens=7, temperature=0, seed=3)
        reply = raw.parse()
        assert reply.choices[0].message.content == "echo: What is the derivative of x**2?"
        assert raw.headers["x-capsat-model"] == ranked[0]
        p_header = float(raw.headers["x-capsat-p-correct"])
        assert p_header == pytest.approx(probs[controller.models.index(ranked[0])], abs=1e-6)
        request_id = raw.headers["x-capsat-request-id"]
        # Fields the router does not read reach the backend unchanged; the model is the backend's.
        sent = stub.calls[-1]["body"]
        assert (sent["max_tokens"], sent["temperature"], sent["seed"]) == (7, 0, 3)
        assert sent["model"] == "echo" and sent["messages"] == QUESTION

        with client.chat.completions.with_streaming_response.create(
                model="capsat", messages=QUESTION, stream=True) as response:
            assert response.headers["x-capsat-model"] == ranked[0]
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = list(response.parse())
        words = [c.choices[0].delta.content for c in chunks if c.choices and
                 c.choices[0].delta.content]
        assert "".join(words) == "echo: What is the derivative of x**2?" and len(words) > 3
        assert chunks[-1].usage.completion_tokens == 7

        route = httpx2.post(proxy.url + "/v1/route", json={"prompt": "2+2?",
                                                           "model": "capsat:threshold=0.3"})
        assert route.status_code == 200
        body = route.json()
        assert body["policy"] == "threshold:0.3" and set(body["probabilities"]) == set(ranked)
        # threshold: the cheapest clearing 0.3 (equal prices: the higher P, i.e. the best).
        assert body["model"] == ranked[0] and body["order"][0] == ranked[0]
        models = httpx2.get(proxy.url + "/v1/models").json()
        assert models["data"][0]["id"] == "capsat" and models["data"][0]["candidates"] == list(
            controller.models)
        assert httpx2.get(proxy.url + "/health").json()["status"] == "ok"
        metrics = httpx2.get(proxy.url + "/metrics").text
    assert 'capsat_requests_total{endpoint="chat",status="ok"} 2.0' in metrics
    assert f'capsat_routed_total{{model="{ranked[0]}"}} 3.0' in metrics
    assert f'capsat_answered_total{{model="{ranked[0]}"}} 2.0' in metrics
    assert f'capsat_spend_total{{model="{ranked[0]}"}} 2.0' in metrics
    assert "capsat_routing_seconds_bucket" in metrics and "capsat_backend_seconds_count" in metrics

    records = list(read_log(log))
    assert [r["endpoint"] for r in records] == ["chat", "chat", "route"]
    assert records[0]["id"] == request_id and records[0]["status"] == "ok"
    assert records[1]["stream"] and records[1]["completion_tokens"] == 7
    assert records[0]["p"][ranked[0]] == pytest.approx(p_header, abs=1e-6)
    assert records[2]["instruction"] == "2+2?" and records[0]["instruction"] == QUESTION[0][
        "content"]
    # The log re-routes with capsat route (its instructions are under 'instruction').
    out = tmp_path / "rerouted.jsonl"
    assert cli_main(["route", "--router", best_dir, "--input", str(log), "--id-field", "id",
                     "--output", str(out), "--no-progress"]) == 0
    rerouted = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rerouted] == [r["id"] for r in records]
    assert all(r["model"] == ranked[0] for r in rerouted)


def test_faults_fall_back_to_the_next_best(tmp_path, best_dir, ranked, stub):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = {ranked[0]: ("status:500", 1), ranked[1]: ("slow:3", 1), ranked[3]: ("echo", 1),
            ranked[4]: ("echo", 1)}
    path = write_backends(tmp_path / "b.yaml", stub.url, spec, timeout=0.5)
    text = Path(path).read_text() + (f"  {ranked[2]}:\n    base_url: {dead}/v1\n    model: x\n"
                                     f"    cost_per_call: 1\n")
    order = [ranked[0], ranked[1], ranked[2], ranked[3], ranked[4]]
    Path(path).write_text(text)
    log = tmp_path / "decisions.jsonl"
    for tries in (4, 3):
        controller = Controller(best_dir, path, max_tries=tries, decision_log=str(log))
        assert controller.models != order  # the file's order is not the routing order
        with ServerThread(create_app(controller)) as proxy:
            client = client_for(proxy)
            if tries == 4:
                raw = client.chat.completions.with_raw_response.create(model="capsat",
                                                                        messages=QUESTION)
                assert raw.headers["x-capsat-model"] == ranked[3]
                assert raw.headers["x-capsat-first-choice"] == ranked[0]
                assert raw.parse().choices[0].message.content.startswith("echo:")
            else:
                with pytest.raises(openai.APIStatusError) as info:
                    client.chat.completions.create(model="capsat", messages=QUESTION)
                assert info.value.status_code == 502
                assert info.value.body["code"] == "backends_failed"
                assert "3 tried" in info.value.body["message"]
        controller.close()
    answered, failed = list(read_log(log))
    assert answered["status"] == "fallback" and answered["answered_by"] == ranked[3]
    assert [t["status"] for t in answered["tries"]] == ["server_error", "timeout", "connection",
                                                        "ok"]
    assert [t["model"] for t in answered["tries"]] == order[:4]
    assert failed["status"] == "failed" and failed["answered_by"] is None
    assert [t["model"] for t in failed["tries"]] == order[:3]

    # A 4xx is the request's fault: passed back, no other backend tried.
    path = echo_backends(tmp_path, stub, ranked, **{ranked[0]: ("status:422", 1)})
    before = len(stub.calls)
    with ServerThread(create_app(Controller(best_dir, path))) as proxy:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            client_for(proxy).chat.completions.create(model="capsat", messages=QUESTION)
    assert info.value.body["code"] == "backend_rejected" and len(stub.calls) == before + 1


def test_a_stream_that_dies_midway_ends_with_an_error(tmp_path, best_dir, ranked, stub):
    log = tmp_path / "decisions.jsonl"
    path = echo_backends(tmp_path, stub, ranked, **{ranked[0]: ("die-midstream", 1)})
    controller = Controller(best_dir, path, decision_log=str(log))
    with ServerThread(create_app(controller)) as proxy:
        stream = client_for(proxy).chat.completions.create(model="capsat", messages=QUESTION,
                                                           stream=True)
        received = []
        with pytest.raises(openai.APIError, match="broke off the stream"):
            for chunk in stream:
                received.append(chunk)
        assert received  # the chunks sent before the break reached the client
        # A stream that fails before its first chunk still falls back.
        calls = len(stub.calls)
        path2 = echo_backends(tmp_path, stub, ranked, **{ranked[0]: ("status:503", 1)})
        controller2 = Controller(best_dir, path2)
        with ServerThread(create_app(controller2)) as proxy2:
            with client_for(proxy2).chat.completions.with_streaming_response.create(
                    model="capsat", messages=QUESTION, stream=True) as response:
                assert response.headers["x-capsat-model"] == ranked[1]
                assert any(c.choices and c.choices[0].delta.content for c in response.parse())
        assert len(stub.calls) == calls + 2
    (record,) = read_log(log)
    assert record["status"] == "stream_broken" and record["answered_by"] == ranked[0]


def test_bad_requests_are_named_and_big_ones_refused(tmp_path, best_dir, ranked, stub,
                                                     monkeypatch):
    controller = Controller(best_dir, echo_backends(tmp_path, stub, ranked))
    with ServerThread(create_app(controller, max_body_bytes=2000)) as proxy:
        url = proxy.url + "/v1/chat/completions"
        cases = [(b"{not json", None), (json.dumps({"model": "capsat"}), "messages"),
                 (json.dumps({"messages": QUESTION}), "model"),
                 (json.dumps({"model": "gpt-4o", "messages": QUESTION}), "model"),
                 (json.dumps({"model": "capsat", "messages": QUESTION, "stream": "yes"}),
                  "stream"),
                 (json.dumps({"model": "capsat", "messages": [{"content": "hi"}]}),
                  "messages[0]"),
                 (json.dumps({"model": "capsat", "messages": [{"role": "system",
                                                               "content": "x"}]}), "messages")]
        for body, param in cases:
            response = httpx2.post(url, content=body, headers={"content-type":
                                                               "application/json"})
            assert response.status_code == 400, body
            assert response.json()["error"]["param"] == param
        big = {"model": "capsat", "messages": [{"role": "user", "content": "x" * 5000}]}
        response = httpx2.post(url, json=big)
        assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

        def chunked():  # no content-length: counted as it arrives
            yield json.dumps(big).encode()

        response = httpx2.post(url, content=chunked())
        assert response.status_code == 413
    monkeypatch.setenv("CAPSAT_TEST_KEY", "s3cret")
    with ServerThread(create_app(controller, api_key="s3cret")) as proxy:
        with pytest.raises(openai.AuthenticationError):
            client_for(proxy, api_key="wrong").chat.completions.create(model="capsat",
                                                                       messages=QUESTION)
        assert httpx2.get(proxy.url + "/metrics").status_code == 401
        assert httpx2.get(proxy.url + "/health").status_code == 200
        reply = client_for(proxy, api_key="s3cret").chat.completions.create(model="capsat",
                                                                            messages=QUESTION)
        assert reply.choices[0].message.content.startswith("echo:")


def test_conversations_keep_their_model(tmp_path, best_dir, ranked, stub):
    # The best model is dear: a steep trade-off prefers the best of the cheap ones, ranked[1].
    spec = {m: ("echo", 0.01) for m in ranked}
    spec[ranked[0]] = ("echo", 1.0)
    path = write_backends(tmp_path / "b.yaml", stub.url, spec)
    turn1 = [{"role": "system", "content": "Be brief."}, QUESTION[0]]
    turn2 = turn1 + [{"role": "assistant", "content": "2x"},
                     {"role": "user", "content": "And of x**3?"}]
    with ServerThread(create_app(Controller(best_dir, path))) as proxy:
        client = client_for(proxy)

        def model_of(messages, policy, **headers):
            raw = client.chat.completions.with_raw_response.create(
                model=policy, messages=messages, extra_headers=headers)
            return raw.headers["x-capsat-model"], raw.headers["x-capsat-affinity"]

        assert model_of(turn1, "capsat") == (ranked[0], "new")
        assert model_of(turn2, "capsat:tradeoff=10") == (ranked[0], "kept")
        # The same first question in a new conversation is routed afresh.
        assert model_of(turn1, "capsat:tradeoff=10") == (ranked[1], "new")
        assert model_of(turn2, "capsat:tradeoff=10", **{"x-capsat-affinity": "off"}) == (
            ranked[1], "off")
        # An explicit conversation id keys the conversation, whatever its text.
        assert model_of(turn1, "capsat:tradeoff=10", **{"x-capsat-conversation-id": "c1"})[0] \
            == ranked[1]
        other = [{"role": "user", "content": "Something else entirely"}]
        assert model_of(other, "capsat", **{"x-capsat-conversation-id": "c1"}) == (
            ranked[1], "kept")
    lru = Affinity(2)
    for key in "abc":
        lru.set(key, key.upper())
    assert len(lru) == 2 and lru.get("a") is None and lru.get("c") == "C"


def test_budget_dual_price_holds_the_spend(tmp_path, best_dir, ranked, stub):
    spec = {m: ("echo", 0.1) for m in ranked}
    spec[ranked[0]] = ("echo", 1.0)
    path = write_backends(tmp_path / "b.yaml", stub.url, spec)
    log = tmp_path / "decisions.jsonl"
    controller = Controller(best_dir, path, budget=3.0, budget_window=3600,
                            decision_log=str(log))
    answered, refused = [], []
    later = QUESTION + [{"role": "assistant", "content": "2x"},
                        {"role": "user", "content": "Sure?"}]
    with ServerThread(create_app(controller)) as proxy:
        client = client_for(proxy)
        for i in range(40):  # one conversation: its later turns would keep the first's model
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="capsat", messages=QUESTION if i == 0 else later)
                answered.append(raw.headers["x-capsat-model"])
            except openai.RateLimitError as err:
                refused.append(err)
        metrics = httpx2.get(proxy.url + "/metrics").text
    records = list(read_log(log))
    spent = sum(r["cost"] for r in records)
    assert spent <= 3.0 + 1e-9 and spent > 2.5  # used, never overrun
    # The first request has no rate to go by; then the window's pace makes the best model
    # too dear and the budget's choice is a cheap one, even for the same conversation.
    assert answered[0] == ranked[0] and ranked[0] not in answered[3:]
    assert records[1]["affinity"] == "budget"
    assert records[5]["dual_price"] > 0
    assert refused and refused[0].body["code"] == "budget_exhausted"
    assert int(refused[0].response.headers["retry-after"]) > 3000
    assert len(answered) + len(refused) == 40 and len(records) == len(answered)
    assert "capsat_budget_dual_price" in metrics

    now = [0.0]
    budget = SpendBudget(1.0, 10.0, clock=lambda: now[0])
    budget.settle("r1", 0.9)
    assert budget.remaining() == pytest.approx(0.1)
    assert not budget.affordable(np.array([0.5, 0.2]))
    now[0] = 10.5  # a new window
    assert budget.remaining() == pytest.approx(1.0) and budget.affordable(np.array([0.5]))


def test_decision_log_repairs_a_torn_last_line(tmp_path, capsys):
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "mo')
    with AppendLog(path) as log:
        assert log.repaired_bytes == len(b'{"id": "c", "mo')
        log.append({"id": "d", "p": np.float32(0.5)})
    assert "torn last line" in capsys.readouterr().err
    assert [r["id"] for r in read_log(path)] == ["a", "b", "d"]
    assert (tmp_path / "decisions.jsonl.torn").read_bytes().startswith(b'{"id": "c"')
    with AppendLog(path) as log:
        assert log.repaired_bytes == 0


def test_kill_9_mid_request_leaves_whole_lines_and_restarts(tmp_path, best_dir, ranked, stub):
    # The cheapest candidate is slow: a steep trade-off sends a request there and keeps it in
    # flight when the kill comes.
    spec = {m: ("echo", 1.0) for m in ranked}
    spec[ranked[-1]] = ("slow:30", 0.01)
    path = write_backends(tmp_path / "b.yaml", stub.url, spec, timeout=60)
    log, port = tmp_path / "decisions.jsonl", free_port()
    command = [sys.executable, "-m", "capsat.cli", "serve", "--router", best_dir, "--backends",
               path, "--port", str(port), "--decision-log", str(log), "--log-prompts"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"

    def start():
        process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE,
                                   text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    return process
            except httpx2.TransportError:
                time.sleep(0.2)
        process.kill()
        raise AssertionError(process.stderr.read())

    def in_flight():
        try:
            httpx2.post(url, timeout=60, json={"model": "capsat:tradeoff=10",
                                               "messages": QUESTION})
        except httpx2.TransportError:
            pass  # the server dies under it

    process = start()
    try:
        for i in range(5):
            assert httpx2.post(url, json={"model": "capsat", "messages": [
                {"role": "user", "content": f"question {i}"}]}).status_code == 200
        calls = len(stub.calls)
        threading.Thread(target=in_flight, daemon=True).start()
        deadline = time.monotonic() + 10
        while len(stub.calls) == calls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stub.calls[-1]["model"] == "slow:30"  # it reached the backend
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    data = log.read_bytes()
    assert data.endswith(b"\n") and len(data.splitlines()) == 5  # whole lines; none for the
    assert all(json.loads(line) for line in data.splitlines())   # request that never ended

    with open(log, "ab") as fh:  # what a torn write (e.g. a power cut) would leave
        fh.write(b'{"id": "torn", "model": "')
    process = start()
    try:
        assert httpx2.post(url, json={"model": "capsat", "messages": QUESTION}).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    assert "cut a torn last line" in err
    records = list(read_log(log))
    assert len(records) == 6 and records[-1]["instruction"] == QUESTION[0]["content"]


# ------------------------------------------------------------------ the Python API
def test_python_controller(tmp_path, best_dir, ranked, stub):
    from capsat import Controller as Exported

    assert Exported is Controller
    controller = Controller(best_dir, echo_backends(tmp_path, stub, ranked))
    try:
        reply = controller.chat.completions.create(model="capsat", messages=QUESTION,
                                                   max_tokens=5)
        assert reply.choices[0].message.content.startswith("echo:")
        assert reply.capsat["model"] == ranked[0] and reply.capsat["answered_by"] == ranked[0]
        stream = controller.chat.completions.create(model="capsat", messages=QUESTION,
                                                    stream=True)
        assert stream.capsat["model"] == ranked[0]
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "echo: What is the derivative of x**2?"
        model, probabilities = controller.route("What is 2+2?")
        assert model == ranked[0] and set(probabilities) == set(ranked)
        assert controller.route("What is 2+2?", policy="tradeoff=5")[0] == model  # equal prices
        with pytest.raises(RequestError, match="messages"):
            controller.chat.completions.create(model="capsat", messages=[])
    finally:
        controller.close()


def test_a_task_header_routes_with_the_label(tmp_path, mmlu_small, stub, best_dir, ranked):
    """``x-capsat-task`` gives a router that reads task labels the request's label (scored as
    ``Queries(tasks=...)``, over HTTP and from Python); an unknown label, or a router that
    reads none, is a 400 naming the header."""
    from capsat.routers.base import Queries
    from data_builders.aptitude import select_core_items

    router = make_router("aptitude_prior").fit(mmlu_small,
                                               aptitude=select_core_items(mmlu_small, 3, 0))
    controller = Controller(router, echo_backends(tmp_path, stub, router.models))
    text = "Which enzyme unwinds DNA at the replication fork?"
    tasks = router.task_labels()
    by_label = {t: router.predict_proba(Queries([text], tasks=[t]), controller.models)[0]
                for t in tasks[:2]}
    assert not np.allclose(*by_label.values())  # the label moves the scores
    with ServerThread(create_app(controller)) as proxy:
        url = proxy.url + "/v1/route"
        for task, expected in by_label.items():
            got = httpx2.post(url, json={"prompt": text}, headers={"x-capsat-task": task})
            assert got.status_code == 200
            p = got.json()["probabilities"]
            assert np.allclose([p[m] for m in controller.models], expected, atol=1e-6)
        plain = httpx2.post(url, json={"prompt": text}).json()["probabilities"]
        unlabelled = router.predict_proba([text], controller.models)[0]
        assert np.allclose([plain[m] for m in controller.models], unlabelled, atol=1e-6)
        bad = httpx2.post(url, json={"prompt": text}, headers={"x-capsat-task": "astrology"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-capsat-task"
        assert "astrology" in bad.json()["error"]["message"]
        reply = httpx2.post(proxy.url + "/v1/chat/completions", headers={
            "x-capsat-task": tasks[0]}, json={"model": "capsat", "messages": QUESTION})
        assert reply.status_code == 200 and reply.headers["x-capsat-model"] in router.models
    model, probabilities = controller.route(text, task=tasks[1])
    assert np.allclose([probabilities[m] for m in controller.models], by_label[tasks[1]],
                       atol=1e-6)
    controller.close()
    plain_router = Controller(best_dir, echo_backends(tmp_path, stub, ranked))
    with pytest.raises(RequestError) as err:
        plain_router.route(text, task=tasks[0])
    assert err.value.param == "x-capsat-task" and "reads no task label" in str(err.value)
    plain_router.close()


def test_micro_batching_scores_concurrent_requests_together(tmp_path, mmlu_small, stub):
    router = make_router("knn", k=10).fit(mmlu_small)
    router.progress = False
    path = write_backends(tmp_path / "b.yaml", stub.url, {m: ("echo", 1) for m in router.models})
    texts = [f"{t[:200]} (variant {i})" for i, t in enumerate(mmlu_small.texts[:24])]
    alone = router.predict_proba(texts)
    counts = {}
    for size in (32, 1):
        controller = Controller(router, path, batch_max_size=size, batch_window_ms=20)

        async def burst():
            return await asyncio.gather(*(controller.aroute(t) for t in texts))

        decisions = controller._sync(burst())
        got = np.array([[d.probabilities[m] for m in router.models] for d in decisions])
        np.testing.assert_allclose(got, alone, atol=1e-6)  # same scores, batched or not
        assert [d.model for d in decisions] == [router.models[j] for j in alone.argmax(1)]
        counts[size] = controller.batcher.batches
        controller.close()
    assert counts[1] == len(texts) and counts[32] <= 4


def test_import_capsat_loads_no_torch_fastapi_or_openai():
    script = ("import sys, capsat, capsat.cli, capsat.serving\n"
              "from capsat import Controller\n"
              "from capsat.serving import ServeConfig\n"
              "heavy = [m for m in ('torch', 'fastapi', 'openai', 'uvicorn') if m in "
              "sys.modules]\n"
              "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
