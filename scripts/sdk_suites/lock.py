"""Write the locks of `make sdk-suites` (requirements/sdk-suites/), for `make lock-sdk-suites`.

    python scripts/sdk_suites/lock.py UV PYTHON openai anthropic

For each SDK, at the version requirements/test.txt pins:
- NAME-sdist.txt: its release sdist from PyPI, with the sdist's sha256 (the suite and the SDK
  source the target runs come from it, hash-checked);
- NAME.txt: the venv the SDK's own suite runs in, hash-checked: every package of the SDK's
  ``uv.lock`` (all extras, its default dependency groups: the suite's test deps) at the version
  pinned there, plus its build backend (the sdist is installed without build isolation) and
  StreamGuard's own dependencies. The ``uv.lock`` pins are uv's preferences, not hard pins, so
  a pin the index does not serve (a yanked or missing release) moves to the nearest that
  resolves; the script prints every pin that moved.

The SDK's ``uv.lock`` decides the versions, so ``make lock``'s --upgrade does not apply here.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "requirements" / "sdk-suites"
PLATFORM = ["--python-version", "3.11", "--python-platform", "x86_64-unknown-linux-gnu"]
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\\n]+)")


def pinned_version(name: str) -> str:
    for line in (ROOT / "requirements" / "test.txt").read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match and match.group(1).lower() == name:
            return match.group(2)
    raise SystemExit(f"{name} is not pinned in requirements/test.txt")


def fetch_sdist(python: str, name: str, version: str, into: Path) -> Path:
    subprocess.run(
        [
            *(python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"),
            "-d",
            str(into),
            f"{name}=={version}",
        ],
        check=True,
    )
    (sdist,) = into.glob(f"{name}-{version}.tar.gz")
    return sdist


def pins(text: str) -> dict[str, str]:
    """Package -> version, for the packages pinned once (not per Python version)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = _PIN.match(line)
        if match:
            found.setdefault(match.group(1).lower(), []).append(match.group(2))
    return {package: versions[0] for package, versions in found.items() if len(versions) == 1}


def lock(uv: str, python: str, name: str) -> None:
    version = pinned_version(name)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sdist = fetch_sdist(python, name, version, work)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        (OUT / f"{name}-sdist.txt").write_text(
            f"# The {name} release sdist whose own test suite `make sdk-suites` runs"
            " (make lock-sdk-suites).\n"
            f"{name}=={version} --hash=sha256:{digest}\n",
            encoding="utf-8",
        )
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = work / f"{name}-{version}"
        exported = subprocess.run(
            [
                *(uv, "export", "--frozen", "--all-extras", "--format", "requirements-txt"),
                "--no-emit-project",
                "--no-hashes",
                "--no-header",
                "--no-annotate",
            ],
            cwd=source,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        # The names (with their markers) are the requirements; the versions are preferences,
        # read by uv from the output file it is about to rewrite.
        names = re.sub(r"==[^ ;\n]+", "", exported)
        build = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
        backend = "\n".join(build["build-system"]["requires"])
        inputs = work / "inputs.txt"
        inputs.write_text(f"{names}\n{backend}\n", encoding="utf-8")
        target = OUT / f"{name}.txt"
        target.write_text(exported, encoding="utf-8")
        subprocess.run(
            [
                *(uv, "pip", "compile", "-q", "--generate-hashes", *PLATFORM, "--no-header"),
                "--no-annotate",
                "-o",
                str(target),
                str(ROOT / "pyproject.toml"),
                str(ROOT / "requirements" / "tools.in"),
                str(inputs),
            ],
            check=True,
        )
    header = (
        f"# The venv of {name} {version}'s own test suite (make sdk-suites): the sdist's uv.lock"
        "\n# (all extras, default groups), its build backend and StreamGuard's dependencies."
        "\n# Written by `make lock-sdk-suites` (scripts/sdk_suites/lock.py); do not edit.\n"
    )
    locked = target.read_text(encoding="utf-8")
    target.write_text(header + locked, encoding="utf-8")
    wanted, got = pins(exported), pins(locked)
    for package, pin in sorted(wanted.items()):
        if package in got and got[package] != pin:
            print(f"{name}: {package} {pin} (uv.lock) is locked at {got[package]}")


def main() -> None:
    uv, python, *names = sys.argv[1:]
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        lock(uv, python, name)


if __name__ == "__main__":
    main()
