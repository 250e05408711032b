"""Web and framework integrations: the ASGI middleware, FastAPI relays.

Floor: ``integrations``, the top of the library below the public face; it may import
everything under it (``providers``, ``_runtime``, the engine) and nothing imports it but the
application (and ``streamguard`` itself).
"""

from __future__ import annotations

from typing import Any

__all__ = ["framework_patchers"]


def framework_patchers() -> list[Any]:
    """The frameworks' patchers (LiteLLM, the Agents SDK, LangChain, LlamaIndex, DSPy,
    AutoGen): each applies
    when the application imports its framework, after the SDK patchers
    (``streamguard.providers.all_patchers``)."""
    from streamguard.integrations.agents import AgentsPatcher
    from streamguard.integrations.autogen import AutoGenPatcher
    from streamguard.integrations.crewai import CrewAIPatcher
    from streamguard.integrations.dspy import DSPyPatcher
    from streamguard.integrations.langchain import LangChainPatcher
    from streamguard.integrations.litellm import LiteLLMPatcher
    from streamguard.integrations.llamaindex import LlamaIndexPatcher

    return [
        LiteLLMPatcher(),
        AgentsPatcher(),
        LangChainPatcher(),
        LlamaIndexPatcher(),
        DSPyPatcher(),
        AutoGenPatcher(),
        CrewAIPatcher(),
    ]
