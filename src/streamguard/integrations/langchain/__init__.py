"""LangChain: ``astream_events`` (v1, v2) and ``astream_log`` drain the model stream from a
background task; the model stream stops when the application stops consuming the events."""

from __future__ import annotations

from streamguard.integrations.langchain._patch import LangChainPatcher

__all__ = ["LangChainPatcher"]
