#!/usr/bin/env python3
"""A minimal Loki push endpoint for scripts/ci-ecosystem: answers 204 to every POST on
/loki/api/v1/push (404 elsewhere), on 127.0.0.1 and an ephemeral port that it writes, once
bound, to the file named by its only argument. It stops on SIGTERM."""
import http.server
import os
import sys


class Push(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204 if self.path == "/loki/api/v1/push" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Push)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
