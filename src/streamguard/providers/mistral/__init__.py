"""mistralai: chat, FIM, agents and conversation streams, sync and async."""

from streamguard.providers.mistral._patch import MistralPatcher

__all__ = ["MistralPatcher"]
