"""A loopback stand-in for the ClearML API server: just the endpoints a release calls, every request recorded.

It answers the way the real server does (`{"meta": {...}, "data": {...}}`, the API version in the token), checks the
access and secret key on `auth.login` and the token on every other call, and keeps projects, tasks and models in
memory. `fail` names endpoints that answer with an error (400), to test what a failure mid-publish leaves behind.
"""
from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt


class FakeClearML:
    "A fake ClearML API server on 127.0.0.1 (a random port) in a thread; `with FakeClearML(...) as srv:`."

    def __init__(self, access: str, secret: str, tasks=(), projects=("derma-nb",), fail=()):
        self.access, self.secret, self.fail = access, secret, set(fail)
        self.token = jwt.encode({"api_version": "2.23", "server_version": "1.16.0", "feature_set": "basic",
                                 "exp": int(time.time()) + 3600, "identity": {"user": "u", "company": "c"}},
                                "a signing key of the fake server, 32+ bytes", algorithm="HS256")
        self.projects = {f"p{i}": {"id": f"p{i}", "name": n} for i, n in enumerate(projects)}
        self.tasks = {t["id"]: {"tags": [], **t} for t in tasks}
        self.models: dict[str, dict] = {}
        self.calls: list[dict] = []  # {"endpoint", "body", "auth"}: what each request asked (no header values)
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def endpoints(self) -> list[str]:
        return [c["endpoint"] for c in self.calls]

    def bodies(self, endpoint: str) -> list[dict]:
        return [c["body"] for c in self.calls if c["endpoint"] == endpoint]

    # the endpoints ------------------------------------------------------------------------------------------------
    def _projects_get_all(self, b):
        pat = re.compile(b.get("name") or ".*")
        return {"projects": [{"id": p["id"]} for p in self.projects.values() if pat.search(p["name"])]}

    def _projects_create(self, b):
        pid = f"p{len(self.projects)}"
        self.projects[pid] = {"id": pid, "name": b["name"]}
        return {"id": pid}

    def _tasks_get_all(self, b):
        want, projects, ids = set(b.get("tags") or []), set(b.get("project") or []), set(b.get("id") or [])
        hits = [t for t in self.tasks.values() if (not want or want & set(t["tags"]))
                and (not projects or t.get("project") in projects) and (not ids or t["id"] in ids)]
        fields = b.get("only_fields") or ["id", "name", "tags"]
        return {"tasks": [{k: t.get(k) for k in fields} for t in hits]}

    def _tasks_edit(self, b):
        if b["task"] not in self.tasks:
            raise KeyError(f"task {b['task']} not found")
        if "tags" in b:
            self.tasks[b["task"]]["tags"] = list(b["tags"])
        return {"updated": 1, "fields": {"tags": b.get("tags")}}

    def _models_create(self, b):
        mid = uuid.uuid4().hex
        self.models[mid] = {**b, "id": mid, "ready": bool(b.get("ready"))}
        return {"id": mid, "created": True}

    def _models_set_ready(self, b):
        self.models[b["model"]]["ready"] = True
        return {"updated": 1, "published_task": None}

    def _models_delete(self, b):
        return {"deleted": self.models.pop(b["model"], None) is not None, "url": None}

    # HTTP ---------------------------------------------------------------------------------------------------------
    def _answer(self, endpoint: str, headers, body: dict) -> tuple[int, dict | None, str]:
        auth = headers.get("Authorization", "")
        if endpoint == "auth.login":
            basic = "Basic " + base64.b64encode(f"{self.access}:{self.secret}".encode()).decode()
            return (200, {"token": self.token}, "OK") if auth == basic else (401, None, "Unauthorized")
        if auth != f"Bearer {self.token}":
            return 401, None, "Invalid token"
        if endpoint in self.fail:
            return 400, None, f"{endpoint} refused (the test asked for it)"
        fn = getattr(self, "_" + endpoint.replace(".", "_"), None)
        if fn is None:
            return 404, None, f"endpoint {endpoint} not implemented by the fake server"
        with self.lock:
            return 200, fn(body), "OK"

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self):
                path = self.path.split("?")[0].strip("/")
                version, _, endpoint = path.rpartition("/")
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw.strip() else {}
                kind = self.headers.get("Authorization", "").split(" ")[0] or None
                srv.calls.append({"endpoint": endpoint, "body": body, "auth": kind})
                try:
                    code, data, msg = srv._answer(endpoint, self.headers, body)
                except Exception as e:  # a bad request: the server's own error envelope
                    code, data, msg = 400, None, f"{type(e).__name__}: {e}"
                out = json.dumps({"meta": {"id": uuid.uuid4().hex, "trx": uuid.uuid4().hex,
                                           "endpoint": {"name": endpoint, "requested_version": version.lstrip("v"),
                                                        "actual_version": "2.23"},
                                           "result_code": code, "result_subcode": 0 if code == 200 else 10,
                                           "result_msg": msg, "error_stack": ""},
                                  "data": data or {}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = handle_one

            def log_message(self, *a):  # quiet
                pass

        return Handler
