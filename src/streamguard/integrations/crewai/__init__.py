"""CrewAI: ``Crew(stream=True).kickoff()`` / ``kickoff_async()`` run the crew on a thread or
task of their own; the crew's model streams stop when the application stops consuming the
streaming output."""

from __future__ import annotations

from streamguard.integrations.crewai._patch import CrewAIPatcher

__all__ = ["CrewAIPatcher"]
