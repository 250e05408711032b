"""StreamGuard benchmarks: ``python -m benchmarks`` (``make bench``), see ``README.md``.

Every figure is a ratio against a baseline measured in the same run, with interleaved
repetitions (A, B, A, B, ...) and medians, so the noise of a shared machine hits both sides.
Each benchmark runs in a fresh worker process (``benchmarks._worker``) so that OTel providers,
patches and memory measurements of one cannot leak into another.
"""
