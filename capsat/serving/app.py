"""``capsat serve``: an OpenAI-compatible HTTP layer (FastAPI + uvicorn) over a Controller.

- ``POST /v1/chat/completions``: routed and forwarded (``stream: true`` passes the backend's
  SSE chunks through one by one). Headers: ``x-capsat-model`` (the candidate that answered),
  ``x-capsat-p-correct`` (its P(correct)), ``x-capsat-request-id``, ``x-capsat-policy``,
  ``x-capsat-first-choice``, ``x-capsat-affinity``. Request headers
  ``x-capsat-conversation-id`` (keep a conversation on one model), ``x-capsat-affinity:
  off`` and ``x-capsat-task`` (the request's task label, for routers that read one: 400 if
  the router reads none or does not know it).
- ``POST /v1/route``: the decision only (``messages`` or ``prompt``; ``model`` may name a
  policy), no backend call.
- ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).

Errors are OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``): 400 names
the field, 401 a missing or wrong key, 413 an oversized body, 429 a spent budget, 502 when no
backend answered. With an API key, every endpoint but ``/health`` needs ``Authorization:
Bearer KEY``.
"""
from __future__ import annotations

import hmac
import json
import os
import sys
import traceback
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .config import ServeConfig
from .controller import MODEL_NAME, Controller, Decision, RequestError

AFFINITY_OFF = ("off", "false", "0", "no")


def create_app(controller: Controller, *, api_key: str | None = None,
               max_body_bytes: int = 1_000_000):
    from .metrics import CONTENT_TYPE_LATEST

    @asynccontextmanager
    async def lifespan(app):
        yield
        await controller.aclose()  # its clients and scoring worker; the log stays open

    app = FastAPI(title="capsat", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)

    def error_response(err: RequestError) -> JSONResponse:
        return JSONResponse(err.to_json(), status_code=err.status, headers=err.headers)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
            raise RequestError("missing or wrong API key (send 'Authorization: Bearer KEY')",
                               status=401, code="invalid_api_key", kind="authentication_error")

    async def read_json(request: Request) -> object:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise too_large(int(length))
        body = bytearray()
        async for part in request.stream():  # a chunked body has no length: count as it comes
            body += part
            if len(body) > max_body_bytes:
                raise too_large(len(body))
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"the body is not valid JSON: {err}") from None

    def too_large(size: int) -> RequestError:
        return RequestError(f"the request body ({size} bytes) is over the limit of "
                            f"{max_body_bytes} bytes", status=413, code="body_too_large")

    def options(request: Request) -> dict:
        return {"conversation": request.headers.get("x-capsat-conversation-id") or None,
                "affinity": request.headers.get("x-capsat-affinity", "on").lower()
                not in AFFINITY_OFF,
                "task": request.headers.get("x-capsat-task", "").strip() or None}

    def decision_headers(decision: Decision) -> dict:
        return {"x-capsat-model": decision.answered_by or decision.model,
                "x-capsat-p-correct": f"{decision.p_correct:.6f}",
                "x-capsat-request-id": decision.request_id,
                "x-capsat-policy": decision.policy,
                "x-capsat-first-choice": decision.model,
                "x-capsat-affinity": decision.affinity}

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        # A bug or a router failure: the client gets an OpenAI-style 500, the operator the trace.
        traceback.print_exception(err, file=sys.stderr)
        return error_response(RequestError(f"internal error: {type(err).__name__}: {err}",
                                           status=500, code="internal_error", kind="api_error"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            check_key(request)
            decision, result = await controller.complete(await read_json(request),
                                                         **options(request))
        except RequestError as err:
            return error_response(err)
        if not hasattr(result, "__anext__"):
            return JSONResponse(result.to_dict(mode="json"), headers=decision_headers(decision))

        async def events():
            try:
                async for chunk in result:
                    yield f"data: {chunk.to_json(indent=None)}\n\n"
                yield "data: [DONE]\n\n"
            except RequestError as err:  # the backend broke off: tell the client, then end
                yield f"data: {json.dumps(err.to_json())}\n\n"
            finally:
                await result.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**decision_headers(decision),
                                          "cache-control": "no-cache"})

    @app.post("/v1/route")
    async def route(request: Request):
        try:
            check_key(request)
            decision = await controller.route_request(await read_json(request),
                                                      **options(request))
        except RequestError as err:
            return error_response(err)
        body = {"id": decision.request_id, "model": decision.model,
                "p_correct": decision.p_correct, "probabilities": decision.probabilities,
                "policy": decision.policy, "order": decision.order,
                "expected_costs": decision.expected_costs, "dual_price": decision.dual_price,
                "affinity": decision.affinity, "routing_ms": decision.routing_ms}
        return JSONResponse(body, headers=decision_headers(decision))

    @app.get("/v1/models")
    async def models(request: Request):
        try:
            check_key(request)
        except RequestError as err:
            return error_response(err)
        return {"object": "list", "data": [
            {"id": MODEL_NAME, "object": "model", "owned_by": "capsat",
             "default_policy": str(controller.policy), "candidates": controller.models}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "router": controller.router.name,
                "candidates": len(controller.models)}

    @app.get("/metrics")
    async def metrics(request: Request):
        try:
            check_key(request)
        except RequestError as err:
            return error_response(err)
        return Response(controller.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(config: ServeConfig) -> None:
    """Run ``capsat serve`` until interrupted."""
    import uvicorn

    config.check()
    controller = Controller.from_config(config)
    api_key = os.environ[config.api_key_env] if config.api_key_env else None
    app = create_app(controller, api_key=api_key, max_body_bytes=config.max_body_bytes)
    log = f"; decision log {config.decision_log}" if config.decision_log else ""
    print(f"capsat serve: {controller.router.name} router over {len(controller.models)} "
          f"candidate(s) ({', '.join(controller.models)}), policy {controller.policy}"
          f"{f', budget {config.budget:g} per {config.budget_window:g} s' if config.budget else ''}"
          f"{log}; http://{config.host}:{config.port}/v1", flush=True)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        controller.close()
