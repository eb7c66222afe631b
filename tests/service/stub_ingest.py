"""A scripted stand-in for the ingestion endpoint, run as a subprocess by the sender tests.

    python stub_ingest.py PLAN.json LOG.jsonl

Listens on 127.0.0.1, on a free port it prints on the first line of stdout. PLAN is a list of
answers, one per request in order (the last one repeats): {"status": 200, "headers": {...},
"body": "..."} where a body of "@results" becomes one accepted result per event of the
request. Every request is appended to LOG as {"path", "headers", "body" (latin-1 text)}.
Stopped by the test with SIGTERM (by PID).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

plan = json.loads(open(sys.argv[1]).read())
log_path = sys.argv[2]
lock = threading.Lock()
count = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        return None

    def do_POST(self) -> None:  # noqa: N802
        global count
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            answer = plan[min(count, len(plan) - 1)]
            count += 1
            with open(log_path, "a") as log:
                log.write(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body.decode("latin-1")}) + "\n")
        out = answer.get("body", "")
        if out == "@results":
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            events = doc if isinstance(doc, list) else [doc]
            out = json.dumps({"results": [{"id": e.get("id"), "type": e.get("type"), "status": "accepted"}
                                          if isinstance(e, dict) else {"status": "rejected", "reason": "malformed_json"}
                                          for e in events]})
        data = out.encode()
        self.send_response(answer.get("status", 200))
        for name, value in answer.get("headers", {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
