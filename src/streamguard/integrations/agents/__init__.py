"""The OpenAI Agents SDK: a streamed run's model streams stop when the application stops
consuming its events."""

from __future__ import annotations

from streamguard.integrations.agents._patch import AgentsPatcher

__all__ = ["AgentsPatcher"]
