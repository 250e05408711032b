"""10. The peers beside the floor: OpenLLMetry and OTel's openai-v2, OTel SDK, same machine.

Each peer runs in processes of its own, from a venv with the ``bench-peers`` extra (``make
bench-peers-venv``; ``$SGBENCH_PEERS_PYTHON`` or ``.venv-peers/bin/python``): a peer's
``uninstrument()`` does not remove all its wrappers, and its entry points must not reach the
default suite. Processes alternate, bare then peer then peer then bare ... (``benchmarks.floor
--peer``); each measures every case (the same 1,000-chunk and 1-chunk streams as benchmark 9)
after a warm-up, and the figure pairs each peer process with the bare process next to it. The
floor (a do-nothing ``wrapt.ObjectProxy``) is measured inside the bare processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _common as c
from benchmarks.floor import PEERS

REPO = Path(__file__).resolve().parent.parent


def _python() -> str | None:
    configured = os.environ.get("SGBENCH_PEERS_PYTHON")
    path = Path(configured) if configured else REPO / ".venv-peers" / "bin" / "python"
    return str(path) if path.exists() else None


def _side(python: str, peer: str, variant: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sg-peer-") as tmp:
        out = Path(tmp) / "r.json"
        cmd = [python, "-m", "benchmarks.floor", "--peer", peer, "--variant", variant]
        cmd += ["--result", str(out)] + (["--quick"] if c.QUICK else [])
        subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=900, check=False)
        if not out.exists():
            return {"error": f"{peer} {variant}: no result"}
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result


def run() -> dict[str, Any]:
    python = _python()
    if python is None:
        return {"figures": [], "skipped": {"peers": "no peers venv: run make bench-peers-venv"}}
    reps = 1 if c.QUICK else 3
    figures: list[dict[str, Any]] = []
    spans: dict[str, Any] = {}
    for peer in PEERS:
        sides: dict[str, list[dict[str, Any]]] = {"bare": [], "peer": []}
        for rep in range(reps):
            for variant in ("bare", "peer") if rep % 2 == 0 else ("peer", "bare"):
                result = _side(python, peer, variant)
                if "error" in result:
                    raise RuntimeError(result["error"])
                sides[variant].append(result)
        spans[peer] = sides["peer"][0]["spans"]
        for key in sides["bare"][0]["values"]:
            provider, mode, shape = key.rsplit(".", 2)
            chunks = sides["bare"][0]["values"][key]["chunks"]
            scale = 1.0 / chunks if shape == "chunk" else 1e-3
            unit = "CPU ns/chunk" if shape == "chunk" else "CPU us/stream"
            bare = [r["values"][key]["bare"] * scale for r in sides["bare"]]
            title = (
                f"{provider} {mode}, {'per chunk' if shape == 'chunk' else 'per 1-chunk stream'}"
            )
            for variant, name, values in (
                (
                    "floor",
                    "do-nothing wrapt.ObjectProxy",
                    [r["values"][key]["floor"] * scale for r in sides["bare"]],
                ),
                (peer, peer, [r["values"][key]["bare"] * scale for r in sides["peer"]]),
            ):
                if variant == "floor" and peer != next(iter(PEERS)):
                    continue  # the floor once, from the first peer's bare processes
                fig = c.figure(
                    f"peers.{shape}.{provider}.{mode}.{variant}.sdk",
                    title,
                    unit,
                    baseline_name="bare SDK (other process)",
                    baseline=bare,
                    name=name,
                    values=values,
                    note=f"{chunks} chunks per stream; processes alternate bare/peer",
                )
                fig["variant"] = variant
                figures.append(fig)
    return {"figures": figures, "spans_per_case": spans}


def profile(ids: list[str]) -> dict[str, Any]:
    return {}
