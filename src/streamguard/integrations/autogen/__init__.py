"""AutoGen AgentChat: a team's ``run_stream`` runs its agents on a background runtime; the
model streams stop when the application stops consuming the team's messages."""

from __future__ import annotations

from streamguard.integrations.autogen._patch import AutoGenPatcher

__all__ = ["AutoGenPatcher"]
