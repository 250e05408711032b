"""LiteLLM: every LiteLLM stream guarded, whichever route (vendor SDK or LiteLLM's own HTTP).

Every stream LiteLLM hands to the application is a ``CustomStreamWrapper``, whether LiteLLM
drives a vendor SDK inside (the ``openai/`` route holds a real ``openai.Stream``) or its own
HTTP handlers (``anthropic/``, ``ollama/`` and most others). ``instrument()`` guards that class
in place, so every construction site is covered and the application keeps LiteLLM's own object.
"""

from __future__ import annotations

from streamguard.integrations.litellm._patch import LiteLLMPatcher

__all__ = ["LiteLLMPatcher"]
