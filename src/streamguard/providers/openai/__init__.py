"""openai: chat completions, Responses and legacy completions, sync and async."""

from streamguard.providers.openai._patch import OpenAIPatcher

__all__ = ["OpenAIPatcher"]
