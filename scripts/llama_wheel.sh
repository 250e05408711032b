#!/usr/bin/env bash
# Build (once) and print the path of a CPU wheel of llama-cpp-python for the real-model tier.
# The build takes ~5-10 minutes on 2 cores, so the wheel is cached outside the clone and reused.
#
# The wheel is compiled for this CPU (GGML_NATIVE), so the cache is keyed by the CPU's flags:
# a cache shared with a machine that has another CPU never hands it a wheel it cannot run.
# One build at a time: a second caller waits for the first (flock) and reuses its wheel.
#
# usage: scripts/llama_wheel.sh [python]   (prints the wheel's path on stdout)
set -euo pipefail
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PY="${1:-python3}"
cpu_flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
CACHE="${STREAMGUARD_CACHE:-$HOME/.cache/streamguard}/wheels/$(uname -m)-$(printf '%s' "$cpu_flags" | sha256sum | cut -c1-12)"
mkdir -p "$CACHE"

find_wheel() { ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true; }

wheel=$(find_wheel)
if [ -z "$wheel" ]; then
	exec 9>"$CACHE/.lock"
	flock 9
	wheel=$(find_wheel)
fi
if [ -z "$wheel" ]; then
	echo "building llama-cpp-python $VERSION for this CPU (5-10 minutes, once) into $CACHE" >&2
	# Only the library: no tests, examples, tools, curl, the C++ server (the Python server is
	# used) or the multimodal library (LLAVA_BUILD: loaded only by the vision chat handlers).
	export CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=ON"
	export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
	tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	"$PY" -m pip wheel --no-deps -q -w "$tmp" "llama-cpp-python==$VERSION" >&2
	# Into the cache in one step: a half-written wheel is never found.
	mv "$tmp"/llama_cpp_python-"$VERSION"-*.whl "$CACHE"/
	wheel=$(find_wheel)
fi
echo "$wheel"
