"""One subpackage per provider SDK: patch targets, chunk metering, usage, closing.

Floor: ``providers``, above ``_runtime`` (and so everything below it); only
``integrations`` and the public face import it. The SDKs themselves are imported lazily,
after a version check, never by a floor below.
"""

from __future__ import annotations

from typing import Any

__all__ = ["all_patchers"]


def all_patchers() -> list[Any]:
    """A patcher per supported SDK; each skips itself when its SDK is not installed."""
    from streamguard.providers.anthropic import AnthropicPatcher
    from streamguard.providers.gemini import GeminiPatcher
    from streamguard.providers.mistral import MistralPatcher
    from streamguard.providers.ollama import OllamaPatcher
    from streamguard.providers.openai import OpenAIPatcher

    return [OpenAIPatcher(), AnthropicPatcher(), OllamaPatcher(), GeminiPatcher(), MistralPatcher()]
