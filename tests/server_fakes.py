"""Stand-ins for servers, for the tests of ``helpers.ggufq.run.serve`` (not a test module)."""

from __future__ import annotations

import http.server
import json

# A child process in place of llama_cpp.server: it binds port argv[2] (0: the system picks),
# writes argv[4] bytes of log, logs the port as uvicorn does (or argv[5], when given, to claim
# another program's port), and answers /v1/models listing the model argv[1].
FAKE_LLAMA_SERVER = """
import http.server, json, sys
alias, port, chatter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
claimed = int(sys.argv[4]) if len(sys.argv) > 4 else None
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": alias}]}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
sys.stderr.write("x" * chatter + "\\n")
bound = claimed or server.server_address[1]
sys.stderr.write(f"INFO:     Uvicorn running on http://127.0.0.1:{bound} (Press CTRL+C to quit)\\n")
sys.stderr.flush()
server.serve_forever()
"""


class _Foreign(http.server.BaseHTTPRequestHandler):
    """Another program's OpenAI-compatible server: it answers, listing its own model."""

    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "someone-else"}]}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def foreign_server() -> http.server.HTTPServer:
    """Another program's server on 127.0.0.1 and a free port (serve it in a thread)."""
    return http.server.HTTPServer(("127.0.0.1", 0), _Foreign)
