"""The ``streamguard`` command: ``demo``, ``verify``, ``report``, ``keygen``."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. A missing extra or bad configuration is one line on
    stderr (status 2); output cut off by a closed pipe (``| head``) or Ctrl-C ends the command
    quietly (status 141 / 130), not in a traceback."""
    from streamguard.exceptions import ConfigurationError

    try:
        return _main(argv)
    except ConfigurationError as exc:  # MissingExtraError included
        print(f"streamguard: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="streamguard", description="StreamGuard: stops LLM token bleed."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="measure the bleed without and with StreamGuard")
    demo.add_argument("--upstream", help="a real Ollama server URL instead of the embedded one")
    demo.add_argument("--model", help="model name for --upstream (default llama3.2)")
    sub.add_parser(
        "verify", help="verify receipts (JSON lines): signatures, hashes, chain", add_help=False
    )
    sub.add_parser(
        "report", help="summarize receipts: spend, prevented, undelivered (--html)", add_help=False
    )
    keygen = sub.add_parser("keygen", help="write a fresh Ed25519 key pair (PEM)")
    keygen.add_argument("private_key")
    keygen.add_argument("public_key")
    if argv and argv[0] == "verify":
        from streamguard._receipts.verify import verify_main

        return verify_main(argv[1:])
    if argv and argv[0] == "report":
        from streamguard._report_cli import report_main

        return report_main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from streamguard._demo import run_demo

        return run_demo(upstream=args.upstream, model=args.model)
    if args.command == "keygen":
        from streamguard._receipts.signing import generate_ed25519_keypair

        generate_ed25519_keypair(args.private_key, args.public_key)
        print(f"wrote {args.private_key} (keep it secret) and {args.public_key}")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
