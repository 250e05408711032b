"""The coexistence tier (``make coexist``): StreamGuard beside other instrumentation of the same
SDK methods, OpenLLMetry (``opentelemetry-instrumentation-openai`` / ``-anthropic`` /
``-ollama``) and OTel's ``opentelemetry-instrumentation-openai-v2``, in either order. Those
packages come with the ``coexist`` extra in their own venv (they also register
``opentelemetry-instrument`` entry points, which would change what the default suite's
subprocess tests run); without them this directory is not collected. A peer added later
(ollama's) is skipped until the lock has it.
"""

from __future__ import annotations

import importlib.util

_PEERS = (
    "opentelemetry.instrumentation.openai",
    "opentelemetry.instrumentation.openai_v2",
    "opentelemetry.instrumentation.anthropic",
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


collect_ignore_glob = [] if all(_installed(m) for m in _PEERS) else ["test_*.py"]

# The upstream (``up``) and the receipt ``sink`` come from streamguard.testing.pytest_plugin.
