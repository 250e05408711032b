"""OpenAI to the browser over SSE, guarded: closing the tab stops the model.

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 uvicorn examples.fastapi_sse:app --port 8080

Open http://127.0.0.1:8080/ for a page that streams an answer and has a Stop button. Any
OpenAI-compatible server works (``streamguard.testing.Upstream`` serves one locally).
"""

from __future__ import annotations

import os
from pathlib import Path

import openai
from fastapi import FastAPI
from fastapi.responses import FileResponse
from pydantic import BaseModel

import streamguard
from streamguard.integrations.asgi import StreamGuardMiddleware
from streamguard.integrations.fastapi import cancel_router, sse_response

streamguard.instrument()
client = openai.OpenAI(
    base_url=os.environ.get("OPENAI_BASE_URL"), api_key=os.environ.get("OPENAI_API_KEY", "k")
)
app = FastAPI()
app.add_middleware(StreamGuardMiddleware)
app.include_router(cancel_router())


class Ask(BaseModel):
    question: str
    max_tokens: int = 400


@app.post("/chat")
def chat(ask: Ask):  # type: ignore[no-untyped-def]
    stream = client.chat.completions.create(
        model=os.environ.get("MODEL", "gpt-4o-mini"),
        messages=[{"role": "user", "content": ask.question}],
        max_tokens=ask.max_tokens,
        stream=True,
    )
    return sse_response(stream)


@app.get("/")
def page() -> FileResponse:
    return FileResponse(Path(__file__).with_name("static") / "index.html")
