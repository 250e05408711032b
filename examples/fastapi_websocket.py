"""Anthropic to the browser over a WebSocket, guarded; a {"type": "cancel"} message stops it.

ANTHROPIC_BASE_URL=http://127.0.0.1:8000 uvicorn examples.fastapi_websocket:app --port 8081
"""

from __future__ import annotations

import os

import anthropic
from fastapi import FastAPI, WebSocket

import streamguard
from streamguard.integrations.asgi import StreamGuardMiddleware
from streamguard.integrations.fastapi import websocket_relay

streamguard.instrument()
client = anthropic.AsyncAnthropic(
    base_url=os.environ.get("ANTHROPIC_BASE_URL"), api_key=os.environ.get("ANTHROPIC_API_KEY", "k")
)
app = FastAPI()
app.add_middleware(StreamGuardMiddleware)


@app.websocket("/ws")
async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    ask = await websocket.receive_json()
    stream = await client.messages.create(
        model=os.environ.get("MODEL", "claude-sonnet-4-0"),
        messages=[{"role": "user", "content": ask["question"]}],
        max_tokens=int(ask.get("max_tokens", 400)),
        stream=True,
    )
    await websocket_relay(websocket, stream)
    await websocket.close()
