"""A local stand-in for the few Hugging Face Hub API routes an upload uses (create repo,
preupload, commit), so upload tests never touch the network. It checks the bearer token and
keeps what was committed in memory; unknown routes answer 404 and are recorded."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}}
        self.commits: list[dict] = []
        self.unknown: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def validate_front_matter(content: str) -> tuple[int, dict]:
        """YAML between the leading '---' lines must parse to a mapping (as on the Hub)."""
        import yaml

        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if not m:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
        try:
            data = yaml.safe_load(m.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid yaml: {err}"}]}
        if not isinstance(data, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"errors": [], "warnings": []}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                hub.unknown.append(f"GET {self.path}")
                self._send(404, {"error": "not in the stand-in"})

            def do_POST(self) -> None:
                body = self._body()
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    if repo_id in hub.repos:
                        self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                        return
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    hub.repos[repo_id] = {"private": private, "files": {}}
                    self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                    return
                if path == "/api/validate-yaml":  # the Hub checks a README's front matter
                    self._send(*hub.validate_front_matter(json.loads(body)["content"]))
                    return
                m = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
                if not m or m.group(1) not in hub.repos:
                    hub.unknown.append(f"POST {self.path}")
                    self._send(404, {"error": "Repository not found"})
                    return
                repo_id, action = m.group(1), m.group(2)
                if action == "preupload":
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                "shouldIgnore": False} for f in files]})
                    return
                repo = hub.repos[repo_id]
                header, added = {}, []
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        header = item["value"]
                    elif item["key"] == "file":
                        value = item["value"]
                        repo["files"][value["path"]] = base64.b64decode(value["content"])
                        added.append(value["path"])
                    else:
                        hub.unknown.append(f"commit item {item['key']}")
                oid = hashlib.sha1(json.dumps([header, added]).encode()).hexdigest()
                hub.commits.append({"repo": repo_id, "summary": header.get("summary"), "files": added})
                self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                 "pullRequestUrl": None})

        return Handler
