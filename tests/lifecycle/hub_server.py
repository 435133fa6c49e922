"""A local stand-in for the Hugging Face Hub: just the endpoints huggingface_hub calls to create a
repository and commit files to it, so ``mistral-ft push`` runs its real client against 127.0.0.1.

Endpoints (as huggingface_hub 1.x calls them; see hf_api.py, _commit_api.py and lfs.py):

* ``POST /api/repos/create``                               create_repo (409 when it exists)
* ``GET  /api/models/{ns}/{name}[/revision/{rev}]``         repo_info (create_repo asks it after a 401/403)
* ``POST /api/models/{ns}/{name}/branch/{branch}``          create_branch (409 when it exists)
* ``POST /api/validate-yaml``                               README.md front matter check
* ``POST /api/models/{ns}/{name}/preupload/{rev}``          regular or LFS, per file
* ``POST /{ns}/{name}.git/info/lfs/objects/batch``          LFS batch: where to PUT each object
* ``PUT  /lfs-objects/{oid}``, ``POST .../verify``          LFS upload (sha256 checked) and verify
* ``POST /api/models/{ns}/{name}/commit/{rev}``             the NDJSON commit

Xet is not offered: a ``xet-write-token`` request gets 404 and is recorded, so a test can assert the
client never took that path.  Tokens map to a role (``write`` or ``read``); a request without a known
token gets 401 and a read token gets 403 on every write, as the Hub answers.  :meth:`HubStandIn.fail`
makes the next N requests whose path contains a fragment answer a status (503 …) or drop the
connection without an answer.  What arrives is kept: files per repository and branch, every
request's method, path and headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

USER = "test-user"
LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".pt", ".pth")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"

_REPO = r"/api/models/(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(_REPO + r"/branch/(?P<rev>[^/]+)"), "create_branch"),
    ("POST", re.compile(_REPO + r"/preupload/(?P<rev>[^/]+)"), "preupload"),
    ("POST", re.compile(_REPO + r"/commit/(?P<rev>[^/]+)"), "commit"),
    ("GET", re.compile(_REPO + r"(?:/revision/(?P<rev>[^/]+))?"), "repo_info"),
    ("POST", re.compile(r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("POST", re.compile(r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify"), "lfs_verify"),
    ("PUT", re.compile(r"/lfs-objects/(?P<oid>[0-9a-f]{64})"), "lfs_put"),
]
_WRITES = {"create_repo", "create_branch", "preupload", "commit", "lfs_batch"}


@dataclass
class Request:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {".gitattributes": GITATTRIBUTES}})
    commits: list[dict] = field(default_factory=list)


class HubStandIn:
    """The stand-in server, listening on a free port of 127.0.0.1 in a background thread."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self._failures: list[list] = []  # [path fragment, remaining, status or None]
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, fragment: str, times: int, status: int | None = 503) -> None:
        """The next ``times`` requests whose path contains ``fragment`` get ``status`` (None: the
        connection is closed without an answer)."""
        with self._lock:
            self._failures.append([fragment, times, status])

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[revision]

    def requests_to(self, fragment: str) -> list[Request]:
        return [r for r in self.requests if fragment in r.path]

    # -- request handling, called from the handler threads -------------------------------------------

    def _planned_failure(self, path: str):
        with self._lock:
            for plan in self._failures:
                if plan[0] in path and plan[1] > 0:
                    plan[1] -= 1
                    return True, plan[2]
        return False, None

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes):
        """(status, JSON-able body, extra headers) for one request."""
        for verb, pattern, name in _ROUTES:
            match = pattern.fullmatch(path)
            if verb == method and match:
                break
        else:
            return 404, {"error": f"stand-in Hub has no route {method} {path}"}, {}
        if name != "lfs_put":  # LFS uploads go to storage URLs that carry no Hub token
            role = self.tokens.get(headers.get("authorization", "").removeprefix("Bearer "))
            if role is None:
                return 401, {"error": "Invalid credentials in Authorization header"}, \
                    {"X-Error-Message": "Invalid credentials in Authorization header"}
            if role != "write" and name in _WRITES:
                message = "You don't have the rights to create a model under this namespace"
                return 403, {"error": message}, {"X-Error-Message": message}
        with self._lock:
            return getattr(self, f"_{name}")(body=body, **match.groupdict())

    def _repo(self, repo: str, rev: str | None = None):
        if repo not in self.repos:
            return None, (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if rev is not None and rev not in self.repos[repo].branches:
            return None, (404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return self.repos[repo], None

    def _create_repo(self, body: bytes):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}, {}
        self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _repo_info(self, body: bytes, repo: str, rev: str | None = None):
        found, error = self._repo(repo, rev)
        if error:
            return error
        return 200, {"id": repo, "private": found.private, "sha": _sha1(repo.encode())}, {}

    def _create_branch(self, body: bytes, repo: str, rev: str):
        found, error = self._repo(repo)
        if error:
            return error
        if rev in found.branches:
            return 409, {"error": f"Reference already exists: refs/heads/{rev}"}, {}
        found.branches[rev] = dict(found.branches["main"])
        return 200, {}, {}

    def _validate_yaml(self, body: bytes):
        content = json.loads(body)["content"]
        match = re.match(r"---\n(.*?)\n---\n", content, re.S)
        if not match:
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}, {}
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}], "warnings": []}, {}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, body: bytes, repo: str, rev: str):
        _, error = self._repo(repo, rev)
        if error:
            return error
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or b"\0" in sample or f["size"] > 10_000_000
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": files}, {}

    def _lfs_batch(self, body: bytes, repo: str):
        _, error = self._repo(repo)
        if error:
            return error
        objects = []
        for obj in json.loads(body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"},
                    "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_put(self, body: bytes, oid: str):
        if hashlib.sha256(body).hexdigest() != oid:
            return 400, {"error": "sha256 of the uploaded bytes does not match the oid"}, {}
        self.lfs[oid] = body
        return 200, {}, {}

    def _lfs_verify(self, body: bytes, repo: str):
        obj = json.loads(body)
        ok = obj["oid"] in self.lfs and len(self.lfs[obj["oid"]]) == obj["size"]
        return (200, {}, {}) if ok else (404, {"error": "object not found"}, {})

    def _commit(self, body: bytes, repo: str, rev: str):
        found, error = self._repo(repo, rev)
        if error:
            return error
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, ops = lines[0], lines[1:]
        if header["key"] != "header":
            return 400, {"error": "the first NDJSON line must be the header"}, {}
        staged = {}
        for op in ops:
            value = op["value"]
            if op["key"] == "file":
                staged[value["path"]] = base64.b64decode(value["content"])
            elif op["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                staged[value["path"]] = self.lfs[value["oid"]]
            else:
                return 400, {"error": f"stand-in Hub does not support {op['key']}"}, {}
        found.branches[rev].update(staged)
        oid = _sha1(body)
        found.commits.append({"revision": rev, "summary": header["value"]["summary"], "files": sorted(staged)})
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _handler(hub: HubStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _serve(self) -> None:
            body = self._body()
            path = self.path.split("?")[0]
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(Request(self.command, path, headers, body))
            planned, status = hub._planned_failure(path)
            if planned and status is None:
                self.close_connection = True  # drop it: the client sees the connection end unanswered
                return
            if planned:
                code, payload, extra = status, {"error": "Service temporarily unavailable"}, {}
            else:
                code, payload, extra = hub._handle(self.command, path, headers, body)
            data = json.dumps(payload).encode()
            self.send_response(code)
            for key, value in {"Content-Type": "application/json", **extra}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = _serve

    return Handler
