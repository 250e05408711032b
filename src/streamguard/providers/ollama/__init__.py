"""ollama: ``Client``/``AsyncClient`` ``chat``/``generate`` and the module-level functions."""

from streamguard.providers.ollama._patch import OllamaPatcher

__all__ = ["OllamaPatcher"]
