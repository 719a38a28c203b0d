"""The Controller: decides which candidate answers a chat request and forwards it there.

``capsat serve`` is a thin HTTP layer over it; in Python::

    from capsat import Controller
    controller = Controller("runs/knn", "backends.yaml")
    reply = controller.chat.completions.create(model="capsat", messages=[...])
    reply.capsat["model"], reply.capsat["probabilities"]     # the decision
    model, probabilities = controller.route("What is 2+2?")

A decision scores the request's last user turn with the router (micro-batched with concurrent
requests), applies the request's policy (``model="capsat:threshold=0.7"``; plain ``capsat`` is
the server's default) over the configured candidates and their expected costs, and, under a
spend budget, the budget's dual price (``budget.py``). The result is an order of candidates:
the chosen one, then the next best by the same policy; a backend that times out, cannot be
reached or answers 5xx is followed by the next, ``max_tries`` in all. A 4xx from a backend is
the request's fault and goes back to the client. A stream that breaks after its first chunk
cannot change model (the client has the headers already): it ends with an error event.

Conversations keep their model: the key is the ``x-capsat-conversation-id`` header, else a
digest of the conversation's opening (system prompt and first user turn, which every later
turn repeats); the model that answered is remembered in a bounded LRU, and a later turn (or
any request with that conversation id) goes to it. A first turn is always routed afresh. A binding budget
outranks affinity: a remembered model dearer than the budget's choice is not kept. Every decision is one
line of the decision log (``decisions.py``), written when the request ends.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import AsyncIterator, Iterator

import numpy as np

from data_builders.errors import DataError

from ..routers.base import Queries
from ..routing.io import last_user_turn
from ..routing.policies import Policy, choose, tradeoff_choice
from .batching import MicroBatcher
from .budget import SpendBudget
from .config import Backends, ServeConfig, load_backends
from .decisions import AppendLog
from .metrics import Metrics

MODEL_NAME = "capsat"
#: Fields of a chat request the Controller reads; every other field goes to the backend as is.
OWN_FIELDS = ("model", "messages", "stream")
PROBLEMS = {"bad_messages": "messages must be a list of {role, content} objects",
            "no_user_turn": "the messages hold no user turn",
            "non_text_instruction": "the last user turn has no text content"}


class RequestError(Exception):
    """A request that cannot be served; becomes an OpenAI-style error body."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 code: str = "invalid_request", kind: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.kind, self.headers = kind, headers or {}

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def parse_policy(model: object, default: Policy) -> Policy:
    """The policy a request's ``model`` field names: ``capsat`` (the default),
    ``capsat:max-accuracy``, ``capsat:threshold=0.7``, ``capsat:tradeoff=0.001``."""
    if not isinstance(model, str):
        raise RequestError("model must be a string such as 'capsat' or "
                           "'capsat:threshold=0.7'", param="model")
    name, colon, spec = model.strip().partition(":")
    if name != MODEL_NAME:
        raise RequestError(f"unknown model {model!r}: this server routes, so ask for 'capsat' "
                           f"or 'capsat:POLICY' (max-accuracy, threshold=T, tradeoff=LAMBDA)",
                           param="model", code="model_not_found")
    if not colon:
        return default
    kind, equals, value = spec.partition("=")
    if kind == "budget":
        raise RequestError("a budget is set for the whole server (--budget), not per request",
                           param="model")
    try:
        return Policy.parse(f"{kind}:{value}" if equals else kind)
    except DataError as err:
        raise RequestError(f"model {model!r}: {err.reason}", param="model") from None


def default_policy(text: str) -> Policy:
    policy = Policy.parse(text)
    if policy.kind == "budget":
        raise DataError("a serving budget is --budget B --budget-window SECONDS, not a policy",
                        field="policy")
    return policy


@dataclass
class ChatRequest:
    policy: Policy
    messages: list
    text: str  # the routed instruction: the last user turn
    chars: int  # characters of all message text: the input of the cost estimate
    stream: bool
    params: dict  # every other field, forwarded unchanged
    opening: str  # digest of the system prompt and first user turn (conversation affinity)
    continues: bool = False  # earlier turns come before the routed one


def parse_chat_request(body: object, policy: Policy, *, route_only: bool = False
                       ) -> ChatRequest:
    """Check an OpenAI chat request; errors name the field (``param``)."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    if route_only and "prompt" in body and "messages" not in body:
        if not isinstance(body["prompt"], str):
            raise RequestError("prompt must be a string", param="prompt")
        body = {**body, "messages": [{"role": "user", "content": body.pop("prompt")}]}
    if "messages" not in body:
        raise RequestError("messages is required", param="messages")
    messages = body["messages"]
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError("each message must be an object with a string role",
                                   param=f"messages[{i}]")
    text, problem, _, continues = last_user_turn(messages)
    if text is None:
        raise RequestError(PROBLEMS[problem], param="messages")
    if not text.strip():
        raise RequestError("the last user turn is empty", param="messages")
    if not route_only and "model" not in body:
        raise RequestError("model is required ('capsat' or 'capsat:POLICY')", param="model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", param="stream")
    first_user = next(i for i, m in enumerate(messages) if m.get("role") == "user")
    opening = hashlib.sha256(json.dumps(messages[:first_user + 1], sort_keys=True,
                                        ensure_ascii=False).encode()).hexdigest()[:24]
    chars = sum(len(c) if isinstance(c, str) else len(json.dumps(c))
                for c in (m.get("content") for m in messages) if c is not None)
    return ChatRequest(parse_policy(body.get("model", MODEL_NAME), policy), messages, text, chars,
                       stream, {k: v for k, v in body.items() if k not in OWN_FIELDS}, opening,
                       continues)


class Affinity:
    """conversation key -> the candidate that answered it, least recently used dropped first."""

    def __init__(self, size: int):
        self.size, self._map = size, OrderedDict()

    def get(self, key: str) -> str | None:
        model = self._map.get(key)
        if model is not None:
            self._map.move_to_end(key)
        return model

    def set(self, key: str, model: str) -> None:
        self._map[key] = model
        self._map.move_to_end(key)
        while len(self._map) > self.size:
            self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)


@dataclass
class Decision:
    request_id: str
    model: str  # the chosen candidate (tried first)
    order: list[str]  # every candidate, in the order they would be tried
    probabilities: dict[str, float]
    expected_costs: dict[str, float]
    policy: str
    dual_price: float | None  # the budget's, when there is one
    affinity: str  # off | new | kept | moved (the remembered model is not configured) |
    #                budget (the budget's price made the remembered model too dear)
    routing_ms: float
    answered_by: str | None = None  # the candidate whose answer the client got

    @property
    def p_correct(self) -> float:
        """P(correct) of the candidate that answered (else of the one chosen)."""
        return self.probabilities[self.answered_by or self.model]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Outcome:
    """What happened to one request after the decision (one line of the decision log)."""

    status: str = "ok"  # ok | fallback | failed | rejected | stream_broken | client_closed |
    #                     route_only | internal_error
    answered_by: str | None = None
    tries: list = field(default_factory=list)  # [{model, status, error, ms}]
    backend_ms: float | None = None
    cost: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _error_kind(err: Exception) -> str | None:
    """How a backend call failed: ``timeout``, ``connection`` or ``server_error`` (worth the
    next candidate), ``rejected`` (a 4xx: the request's own fault), or None (not a backend
    failure at all: a bug, re-raised)."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError):
        return "server_error" if err.status_code >= 500 else "rejected"
    # Mid-stream, the transport's own errors reach us unwrapped.
    if isinstance(err, OSError) or type(err).__module__.split(".")[0] in (
            "httpx", "httpx2", "httpcore", "httpcore2", "h11"):
        return "connection"
    return None


class Controller:
    """Routing and forwarding, shared by ``capsat serve`` and Python code.

    ``router``: a Router, or anything ``resolve_router`` takes. ``backends``: the backends
    YAML file, or a ``Backends``. One Controller serves one event loop at a time (the server's,
    or the private one behind the synchronous ``chat.completions.create`` / ``route``).
    """

    def __init__(self, router, backends, *, policy: str = "max-accuracy", budget: float = 0.0,
                 budget_window: float = 3600.0, max_tries: int = 3,
                 decision_log: str | None = None, log_prompts: bool = False,
                 batch_window_ms: float = 2.0, batch_max_size: int = 32,
                 affinity_size: int = 10_000):
        import openai  # noqa: F401  (loaded now: not on the first request, in the event loop)

        if isinstance(router, str):
            from ..routing.resolve import resolve_router

            router = resolve_router(router, progress=False).router
        router.progress = False
        self.router = router
        self.backends = backends if isinstance(backends, Backends) else load_backends(
            str(backends), router.models)
        self.models = self.backends.models
        self.policy = default_policy(policy)
        self.max_tries = max_tries
        self.budget = SpendBudget(budget, budget_window) if budget else None
        self.log = AppendLog(decision_log) if decision_log else None
        self.log_prompts = log_prompts
        self.metrics = Metrics()
        self.batcher = MicroBatcher(self._score, window_ms=batch_window_ms,
                                    max_size=batch_max_size)
        self.affinity = Affinity(affinity_size)
        self._clients: dict = {}
        self._loop_thread: _LoopThread | None = None
        self.chat = _Chat(self, sync=True)
        self.achat = _Chat(self, sync=False)

    @classmethod
    def from_config(cls, config: ServeConfig) -> "Controller":
        return cls(config.router, config.backends, policy=config.policy, budget=config.budget,
                   budget_window=config.budget_window, max_tries=config.max_tries,
                   decision_log=config.decision_log or None, log_prompts=config.log_prompts,
                   batch_window_ms=config.batch_window_ms,
                   batch_max_size=config.batch_max_size, affinity_size=config.affinity_size)

    # ------------------------------------------------------------------ deciding
    def _score(self, texts, tasks) -> np.ndarray:
        self.metrics.batch_size.observe(len(texts))
        queries = Queries(list(texts), tasks=list(tasks)) if any(tasks) else list(texts)
        return self.router.predict_proba(queries, self.models)

    def _check_task(self, task: str | None) -> str | None:
        """A request's task label (the ``x-capsat-task`` header): one the router reads, or a
        400 naming the header."""
        if task is None:
            return None
        labels = self.router.task_labels()
        if labels is None:
            raise RequestError(f"this router ({self.router.name}) reads no task label; send "
                               f"the request without x-capsat-task", param="x-capsat-task")
        if task not in labels:
            raise RequestError(f"unknown task {task!r}; this router knows {labels}",
                               param="x-capsat-task")
        return task

    def _order(self, policy: Policy, probs: np.ndarray, costs: np.ndarray,
               lam: float | None) -> list[int]:
        """Every candidate, best first: the policy's choice among those left, made cheaper by
        the budget's dual price where that is lower-cost."""
        left, order = list(range(len(self.models))), []
        while left:
            sub = np.array(left)
            p, c = probs[None, sub], costs[None, sub]
            j = int(sub[choose(policy, p, c)[0]])
            if lam:
                cheaper = int(sub[tradeoff_choice(p, c, lam)[0]])
                j = cheaper if costs[cheaper] < costs[j] else j
            order.append(j)
            left.remove(j)
        return order

    async def decide(self, request: ChatRequest, *, request_id: str | None = None,
                     conversation: str | None = None, affinity: bool = True,
                     spend: bool = True, task: str | None = None) -> Decision:
        """Score (with ``task``, the request's task label, where it has one) and choose;
        ``spend=False`` (the route-only endpoint) refuses nothing."""
        started = time.perf_counter()
        request_id = request_id or uuid.uuid4().hex
        task = self._check_task(task)
        probs = np.asarray(await self.batcher.score(request.text, task), dtype=float)
        costs = self.backends.expected_costs(request.chars)
        lam = None
        if self.budget is not None:
            if spend and not self.budget.affordable(costs):
                state = self.budget.remaining()
                ends = self.budget.ends_in(time.monotonic())
                self.metrics.requests.labels("chat", "budget_exhausted").inc()
                raise RequestError(f"the spend budget of this window is used up ({state:.6g} "
                                   f"left); the next window starts in {ends:.0f} s",
                                   status=429, code="budget_exhausted", kind="insufficient_quota",
                                   headers={"retry-after": str(max(1, math.ceil(ends)))})
            state = self.budget.price(probs, costs)
            lam = state.dual_price
            self.metrics.dual_price.set(lam)
            self.metrics.budget_remaining.set(state.remaining)
        order = [self.models[j] for j in self._order(request.policy, probs, costs, lam)]
        how = "off"
        key = conversation or request.opening
        if affinity:
            # A first turn starts a conversation (its answer is remembered); a later turn, or
            # any turn under an explicit conversation id, goes where the conversation lives.
            kept = self.affinity.get(key) if conversation or request.continues else None
            how = "new" if kept is None else ("kept" if kept in self.models else "moved")
            if how == "kept" and lam and costs[self.models.index(kept)] > costs[
                    self.models.index(order[0])]:
                how = "budget"  # a binding budget outranks affinity: it only makes choices cheaper
            if how == "kept":
                order.remove(kept)
                order.insert(0, kept)
        routing_s = time.perf_counter() - started
        self.metrics.routing_seconds.observe(routing_s)
        self.metrics.routed.labels(order[0]).inc()
        return Decision(request_id, order[0], order,
                        {m: round(float(p), 6) for m, p in zip(self.models, probs)},
                        {m: float(c) for m, c in zip(self.models, costs)}, str(request.policy),
                        lam, how, round(routing_s * 1000, 3))

    async def aroute(self, prompt, policy: str | None = None, **options) -> Decision:
        """The decision for a prompt (text or chat messages), without calling a backend."""
        body = {"messages": prompt if isinstance(prompt, list) else
                [{"role": "user", "content": prompt}],
                "model": MODEL_NAME if policy is None else f"{MODEL_NAME}:{policy}"}
        return await self.route_request(body, **options)

    async def route_request(self, body: dict, *, conversation: str | None = None,
                            affinity: bool = True, task: str | None = None) -> Decision:
        """``POST /v1/route``: the decision only (logged like any request)."""
        request = parse_chat_request(body, self.policy, route_only=True)
        decision = await self.decide(request, conversation=conversation, affinity=affinity,
                                     spend=False, task=task)
        self._finish("route", request, decision, Outcome("route_only"))
        return decision

    def route(self, prompt, policy: str | None = None, task: str | None = None
              ) -> tuple[str, dict[str, float]]:
        """(chosen model, every candidate's P(correct)) for a prompt (``task``: its label)."""
        decision = self._sync(self.aroute(prompt, policy, task=task))
        return decision.model, decision.probabilities

    # ------------------------------------------------------------------ forwarding
    def _client(self, model: str):
        import openai

        loop = asyncio.get_running_loop()
        key = (id(loop), model)
        if key not in self._clients:
            backend = self.backends.backends[model]
            # Our own fallback replaces the client's retries.
            self._clients[key] = openai.AsyncOpenAI(base_url=backend.base_url,
                                                    api_key=backend.api_key(),
                                                    timeout=backend.timeout, max_retries=0)
        return self._clients[key]

    async def complete(self, body: dict, *, conversation: str | None = None,
                       affinity: bool = True, request_id: str | None = None,
                       task: str | None = None):
        """Decide and forward a chat request. Returns ``(decision, ChatCompletion)``, or
        ``(decision, async iterator of ChatCompletionChunk)`` for ``stream: true``."""
        request = parse_chat_request(body, self.policy)
        decision = await self.decide(request, request_id=request_id, conversation=conversation,
                                     affinity=affinity, task=task)
        key = conversation or request.opening
        outcome = Outcome()
        if self.budget is not None:
            self.budget.reserve(decision.request_id, decision.expected_costs[decision.model])
        for model in decision.order[:self.max_tries]:
            client, started = self._client(model), time.perf_counter()
            params = {"model": self.backends.backends[model].model,
                      "messages": request.messages, "extra_body": request.params or None}
            try:
                if request.stream:
                    stream = await client.chat.completions.create(**params, stream=True)
                    first = await _first(stream)  # a failure before any chunk may fall back
                else:
                    completion = await client.chat.completions.create(**params)
            except Exception as err:  # noqa: BLE001 - classified below; the rest is re-raised
                kind = _error_kind(err)
                ms = round((time.perf_counter() - started) * 1000, 3)
                outcome.tries.append({"model": model, "status": kind or "internal_error",
                                      "error": f"{type(err).__name__}: {err}"[:300], "ms": ms})
                if kind is None:
                    outcome.status = "internal_error"
                    self._end(request, decision, outcome)
                    raise
                self.metrics.backend_errors.labels(model, kind).inc()
                if kind == "rejected":
                    outcome.status = "rejected"
                    self._end(request, decision, outcome)
                    raise RequestError(f"{model} rejected the request: "
                                       f"{getattr(err, 'message', err)}",
                                       status=getattr(err, "status_code", 400),
                                       code="backend_rejected") from None
                continue
            outcome.answered_by = decision.answered_by = model
            outcome.status = "ok" if model == decision.model else "fallback"
            if affinity:
                self.affinity.set(key, model)
            if request.stream:
                return decision, self._relay(request, decision, outcome, stream, first, started)
            outcome.tries.append({"model": model, "status": "ok", "error": None,
                                  "ms": round((time.perf_counter() - started) * 1000, 3)})
            self._account(request, decision, outcome, completion.usage, started)
            self._end(request, decision, outcome)
            object.__setattr__(completion, "capsat", decision.to_json())
            return decision, completion
        outcome.status = "failed"
        self._end(request, decision, outcome)
        tried = "; ".join(f"{t['model']}: {t['status']}" for t in outcome.tries)
        raise RequestError(f"no backend answered ({len(outcome.tries)} tried: {tried})",
                           status=502, code="backends_failed", kind="api_error")

    async def _relay(self, request, decision, outcome, stream, first, started
                     ) -> AsyncIterator:
        """Pass the backend's chunks through; log the request once, when the stream ends."""
        usage, error = None, None
        try:
            chunk = first
            while chunk is not None:
                usage = getattr(chunk, "usage", None) or usage
                yield chunk
                chunk = await _first(stream)
        except (GeneratorExit, asyncio.CancelledError):
            outcome.status = "client_closed"
            raise
        except Exception as err:  # noqa: BLE001 - the backend died mid-stream: say so, once
            if _error_kind(err) is None:
                outcome.status = "internal_error"
                raise
            outcome.status = "stream_broken"
            error = f"{type(err).__name__}: {err}"[:300]
            self.metrics.backend_errors.labels(outcome.answered_by, "stream_broken").inc()
            raise RequestError(f"{outcome.answered_by} broke off the stream: {error}",
                               status=502, code="stream_broken", kind="api_error") from None
        finally:
            status = "ok" if outcome.status in ("ok", "fallback") else outcome.status
            outcome.tries.append({"model": outcome.answered_by, "status": status,
                                  "error": error,
                                  "ms": round((time.perf_counter() - started) * 1000, 3)})
            self._account(request, decision, outcome, usage, started)
            self._end(request, decision, outcome)
            await stream.close()

    def _account(self, request, decision, outcome: Outcome, usage, started: float) -> None:
        model = outcome.answered_by
        outcome.backend_ms = round((time.perf_counter() - started) * 1000, 3)
        outcome.prompt_tokens = getattr(usage, "prompt_tokens", None)
        outcome.completion_tokens = getattr(usage, "completion_tokens", None)
        outcome.cost = self.backends.call_cost(model, outcome.prompt_tokens,
                                               outcome.completion_tokens, request.chars)
        self.metrics.backend_seconds.labels(model).observe(outcome.backend_ms / 1000)
        self.metrics.answered.labels(model).inc()
        self.metrics.spend.labels(model).inc(outcome.cost)
        if outcome.status == "fallback":
            self.metrics.fallbacks.inc()

    def _end(self, request, decision, outcome: Outcome) -> None:
        if self.budget is not None:
            self.budget.settle(decision.request_id, outcome.cost)
            self.metrics.budget_remaining.set(self.budget.remaining())
        self._finish("chat", request, decision, outcome)

    def _finish(self, endpoint: str, request: ChatRequest, decision: Decision,
                outcome: Outcome) -> None:
        self.metrics.requests.labels(endpoint, outcome.status).inc()
        if self.log is None:
            return
        record = {"id": decision.request_id,
                  "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "endpoint": endpoint, "model": decision.model,
                  "answered_by": outcome.answered_by, "status": outcome.status,
                  "policy": decision.policy, "p": decision.probabilities,
                  "expected_cost": decision.expected_costs[decision.model],
                  "cost": outcome.cost, "dual_price": decision.dual_price,
                  "affinity": decision.affinity, "stream": request.stream,
                  "routing_ms": decision.routing_ms, "backend_ms": outcome.backend_ms,
                  "prompt_tokens": outcome.prompt_tokens,
                  "completion_tokens": outcome.completion_tokens, "tries": outcome.tries}
        if self.log_prompts:
            record["instruction"] = request.text
        self.log.append(record)

    # ------------------------------------------------------------------ sync facade
    def _sync(self, coroutine):
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread.run(coroutine)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        await self.batcher.aclose()

    def close(self) -> None:
        if self._loop_thread is not None:
            self._sync(self.aclose())
            self._loop_thread.stop()
            self._loop_thread = None
        if self.log is not None:
            self.log.close()


async def _first(stream):
    """The next chunk of a stream, or None at its end."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


class _LoopThread:
    """A private event loop for the synchronous API (works inside notebooks too)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="capsat-controller")
        self.thread.start()

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class _Completions:
    def __init__(self, controller: Controller, sync: bool):
        self.controller, self.sync = controller, sync

    def create(self, *, conversation_id: str | None = None, affinity: bool = True,
               task: str | None = None, **body):
        """The OpenAI call (``model``, ``messages``, ``stream``, any other field forwarded;
        ``task``: the request's task label). Returns the backend's ChatCompletion with the
        decision as ``.capsat``; with ``stream=True`` an iterator of chunks whose ``.capsat``
        is the decision."""
        call = self.controller.complete(body, conversation=conversation_id, affinity=affinity,
                                        task=task)
        if not self.sync:
            return _acreate(call)
        decision, result = self.controller._sync(call)
        if body.get("stream"):
            return RoutedStream(self.controller, decision, result)
        return result


async def _acreate(call):
    decision, result = await call
    return AsyncRoutedStream(decision, result) if hasattr(result, "__anext__") else result


class _Chat:
    def __init__(self, controller: Controller, sync: bool):
        self.completions = _Completions(controller, sync)


class RoutedStream:
    """A synchronous iterator over a routed stream's chunks; ``.capsat`` is the decision."""

    def __init__(self, controller: Controller, decision: Decision, chunks):
        self.controller, self.capsat, self._chunks = controller, decision.to_json(), chunks

    def __iter__(self) -> Iterator:
        try:
            while True:
                chunk = self.controller._sync(_first(self._chunks))
                if chunk is None:
                    return
                yield chunk
        finally:
            self.controller._sync(self._chunks.aclose())


class AsyncRoutedStream:
    """An async iterator over a routed stream's chunks; ``.capsat`` is the decision."""

    def __init__(self, decision: Decision, chunks):
        self.capsat, self._chunks = decision.to_json(), chunks

    def __aiter__(self):
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()
