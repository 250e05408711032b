"""LlamaIndex: a chat engine's ``stream_chat``/``astream_chat`` drain the model stream on a
thread or task; the model stream stops when the application stops consuming the response."""

from __future__ import annotations

from streamguard.integrations.llamaindex._patch import LlamaIndexPatcher

__all__ = ["LlamaIndexPatcher"]
