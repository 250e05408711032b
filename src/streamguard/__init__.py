"""StreamGuard: stops LLM token bleed."""
