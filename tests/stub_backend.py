"""A small OpenAI-compatible backend whose behaviour the request's model name selects, for the
fault tests and the load bench (real HTTP, real SSE; no model).

- ``echo``: answers ``echo: <last user text>`` (streamed word by word with ``stream: true``).
- ``slow:SECONDS``: the same, after a pause (a timeout when SECONDS exceeds the caller's).
- ``status:CODE``: an OpenAI-style error with that HTTP status.
- ``die-midstream``: streams one chunk, then drops the connection.
- ``answer:LETTER[:SECONDS]``: answers ``The answer is (LETTER).`` (after a pause).

Every call is recorded in ``app.state.calls`` (model name, stream flag).
"""
from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def _chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    body = {"id": "stub", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"


def create_stub_app() -> FastAPI:
    app = FastAPI()
    app.state.calls = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model, stream = body["model"], bool(body.get("stream"))
        app.state.calls.append({"model": model, "stream": stream, "body": body})
        kind, _, value = model.partition(":")
        if kind == "status":
            return JSONResponse({"error": {"message": f"stub status {value}", "type": "stub",
                                           "param": None, "code": None}},
                                status_code=int(value))
        if kind == "slow":
            await asyncio.sleep(float(value))
        text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        words = ["echo:", *str(text).split()[:8]]
        if kind == "answer":
            letter, _, pause = value.partition(":")
            await asyncio.sleep(float(pause or 0))
            words = ["The", "answer", "is", f"({letter})."]
        usage = {"prompt_tokens": len(str(text).split()), "completion_tokens": len(words),
                 "total_tokens": len(str(text).split()) + len(words)}
        if not stream:
            return {"id": "stub", "object": "chat.completion", "created": int(time.time()),
                    "model": model, "usage": usage,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": " ".join(words)}}]}

        async def events():
            yield _chunk(model, {"role": "assistant", "content": ""})
            for i, word in enumerate(words):
                if kind == "die-midstream" and i == 1:
                    raise ConnectionAbortedError("stub backend dies mid-stream")
                yield _chunk(model, {"content": ("" if i == 0 else " ") + word})
                await asyncio.sleep(0)
            yield _chunk(model, {}, "stop", usage)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
