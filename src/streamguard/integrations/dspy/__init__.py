"""DSPy: ``dspy.streamify(..., async_streaming=False)`` drains the program's stream on a
thread; the model stream stops when the application stops consuming the sync generator. The
native engine's streams (``dspy.LM(..., engine="auto")``, DSPy 3.4+) are guarded at
``LM15Engine.stream`` / ``AsyncLM15Engine.stream``."""

from __future__ import annotations

from streamguard.integrations.dspy._patch import DSPyPatcher

__all__ = ["DSPyPatcher"]
