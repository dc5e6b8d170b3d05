"""A loopback HTTP server that answers the Hugging Face hub's file protocol for one local
folder (``/api/models/<repo>``, its file tree, ``/<repo>/resolve/<revision>/<file>`` with the
commit and ETag headers), so the real download path of transformers / huggingface_hub runs
against it with ``HF_ENDPOINT`` pointing here."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def serve_repo(repo: str, folder: Path) -> tuple[ThreadingHTTPServer, list[str]]:
    """Start the server in a thread; returns it and the list of request paths it receives."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(f"{self.command} {self.path}")

        def do_HEAD(self):
            self._answer(send_body=False)

        def do_GET(self):
            self._answer(send_body=True)

        def _answer(self, send_body: bool):
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{repo}/tree/"):
                data = json.dumps([{"type": "file", "path": p.name, "size": p.stat().st_size}
                                   for p in sorted(folder.iterdir())] if path.endswith("/main") else []).encode()
            elif path == f"/api/models/{repo}":
                data = json.dumps({"id": repo, "sha": COMMIT,
                                   "siblings": [{"rfilename": p.name} for p in sorted(folder.iterdir())]}).encode()
            elif path.startswith(f"/{repo}/resolve/") and (folder / path.split("/", 5)[-1]).is_file():
                data = (folder / path.split("/", 5)[-1]).read_bytes()
            else:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.end_headers()
            if send_body:
                self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests
