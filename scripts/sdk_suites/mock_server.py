"""A stand-in for the SDK suites' mock server, on loopback, for `make sdk-suites`.

Both suites (openai 3.63.0, anthropic 2.17.0) expect Stainless's Steady mock server on
TEST_API_BASE_URL: a Deno program fetched from GitHub (not npm), serving the provider's
OpenAPI spec, which the release sdists do not carry. Neither can be had from the registries
this project may use, so this server stands in. The tests of the generated resources that
open a stream check what the SDK does with a streamed response (its type, closing it, the
request), not what the stream holds, so it answers every streamed request (a JSON body with
"stream": true, or an Accept of text/event-stream) with a well-formed, empty SSE stream, and
every other request with an empty JSON object. Tests whose assertions need the spec's example
bodies fail here, plain and guarded alike, and the comparison counts only what passes plain.
(The tests under tests/lib mock HTTP themselves, with respx, and need no server; those that
replay recorded bodies from inline-snapshot's external files fail plain too: the sdist does not
ship those files.)

    python scripts/sdk_suites/mock_server.py PORT_FILE   # writes the port, serves until killed
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self._streamed(body):
            payload, kind = b": stand-in mock stream\n\n", "text/event-stream"
        else:
            payload, kind = b"{}", "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _streamed(self, body: bytes) -> bool:
        if "text/event-stream" in (self.headers.get("Accept") or ""):
            return True
        if self.headers.get("Content-Type", "").startswith("application/json") and body:
            try:
                decoded = json.loads(body)
            except ValueError:
                return False
            return isinstance(decoded, dict) and decoded.get("stream") is True
        return False

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would drown the test output


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that close a stream early reset the connection: that is the point


def main() -> None:
    server = _Server(("127.0.0.1", 0), _Handler)
    with open(sys.argv[1], "w", encoding="utf-8") as port_file:
        port_file.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
