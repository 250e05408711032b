"""google-genai: ``Models``/``AsyncModels.generate_content_stream`` (chats go through them)."""

from streamguard.providers.gemini._patch import GeminiPatcher

__all__ = ["GeminiPatcher"]
