"""anthropic: messages (and beta messages), ``create(stream=True)`` and ``.stream()``."""

from streamguard.providers.anthropic._patch import AnthropicPatcher

__all__ = ["AnthropicPatcher"]
