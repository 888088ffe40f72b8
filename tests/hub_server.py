"""A local stand-in for the Hugging Face Hub, for tests: a real HTTP server on 127.0.0.1.

It implements the part of the Hub API that the unmodified `huggingface_hub` client calls to create
repos, commit files (preupload + NDJSON commit; every file is answered "regular" so contents travel
inline, no LFS or Xet), read repo and revision info, list trees and resolve files (with the
X-Repo-Commit / ETag / Content-Length headers `file_download.py` checks), plus whoami.

Repos live on disk, one full snapshot directory per commit, so a failed commit leaves nothing behind.
Faults for tests: `fail_commits` (answer the next N commits with 500), unknown tokens (401),
namespaces a user does not own (403).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import shutil
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


def git_blob_id(content: bytes) -> str:
    """The git blob sha1 the Hub reports as a file's oid (and the client compares to skip unchanged files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubServer:
    def __init__(self, root: Path, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None):
        self.root = Path(root)
        self.tokens = tokens  # token -> user name
        self.orgs = orgs or {}  # user -> organisations they can write to
        self.fail_commits = 0  # answer this many commit requests with 500
        self.hold_commits = False  # hold each commit request, unread, until release_commits()
        self.commit_arrived = threading.Event()  # set when a commit request arrives
        self._released = threading.Event()
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def release_commits(self) -> None:
        self._released.set()

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- storage -------------------------------------------------------------------------------
    def repo_dir(self, kind: str, repo_id: str) -> Path:
        return self.root / kind / repo_id

    def meta(self, kind: str, repo_id: str) -> dict | None:
        file = self.repo_dir(kind, repo_id) / "meta.json"
        return json.loads(file.read_text()) if file.is_file() else None

    def save_meta(self, kind: str, repo_id: str, meta: dict) -> None:
        (self.repo_dir(kind, repo_id) / "meta.json").write_text(json.dumps(meta))

    def create_repo(self, kind: str, repo_id: str, owner: str, private: bool = False) -> None:
        base = self.repo_dir(kind, repo_id)
        base.mkdir(parents=True)
        self.save_meta(kind, repo_id, {"owner": owner, "private": private, "branches": {}, "commits": []})
        self.commit(
            kind,
            repo_id,
            "main",
            {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
            [],
            "initial commit",
        )

    def commit(
        self, kind: str, repo_id: str, branch: str, added: dict[str, bytes], deleted: list[str], message: str
    ) -> str:
        """Write a new snapshot (parent + changes) and only then move the branch: all or nothing."""
        meta = self.meta(kind, repo_id)
        commit_id = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        snapshot = self.repo_dir(kind, repo_id) / "commits" / commit_id
        parent = meta["branches"].get(branch)
        if parent:
            shutil.copytree(self.repo_dir(kind, repo_id) / "commits" / parent, snapshot)
        else:
            snapshot.mkdir(parents=True)
        for path in deleted:
            (snapshot / path).unlink(missing_ok=True)
        for path, content in added.items():
            (snapshot / path).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / path).write_bytes(content)
        meta["branches"][branch] = commit_id
        meta["commits"].append({"id": commit_id, "branch": branch, "message": message})
        self.save_meta(kind, repo_id, meta)
        return commit_id

    def add_repo_from_dir(
        self, repo_id: str, source: Path, kind: str = "models", patterns=("*.json", "*.safetensors", "*.txt")
    ) -> None:
        """Publish a local directory (say the offline MiniLM files) as a public repo owned by its namespace."""
        files = {
            str(p.relative_to(source)): p.read_bytes()
            for p in sorted(source.rglob("*"))
            if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)
        }
        self.create_repo(kind, repo_id, owner=repo_id.split("/")[0])
        self.commit(kind, repo_id, "main", files, [], "add files")

    def snapshot(self, kind: str, repo_id: str, revision: str = "main") -> Path | None:
        meta = self.meta(kind, repo_id)
        if meta is None:
            return None
        commit_id = meta["branches"].get(revision) or (
            revision if revision in {c["id"] for c in meta["commits"]} else None
        )
        return self.repo_dir(kind, repo_id) / "commits" / commit_id if commit_id else None

    def files(self, repo_id: str, revision: str = "main", kind: str = "models") -> dict[str, bytes]:
        snapshot = self.snapshot(kind, repo_id, revision)
        return {str(p.relative_to(snapshot)): p.read_bytes() for p in sorted(snapshot.rglob("*")) if p.is_file()}

    def commit_count(self, repo_id: str, kind: str = "models") -> int:
        meta = self.meta(kind, repo_id)
        return len(meta["commits"]) if meta else 0


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        # --- plumbing ------------------------------------------------------------------------
        def reply(
            self,
            status: int,
            body=None,
            headers: dict | None = None,
            error_code: str | None = None,
            message: str | None = None,
            head: bool = False,
        ) -> None:
            if isinstance(body, (dict, list)):
                data = json.dumps(body).encode()
                content_type = "application/json"
            else:
                data = body if isinstance(body, bytes) else (body or "").encode()
                content_type = "application/octet-stream"
            if message is not None and not data:
                data = json.dumps({"error": message}).encode()
                content_type = "application/json"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if error_code:
                self.send_header("X-Error-Code", error_code)
            if message:
                self.send_header("X-Error-Message", message)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return hub.tokens.get(auth[len("Bearer ") :]) if auth.startswith("Bearer ") else None

        def can_write(self, user: str | None, namespace: str) -> bool:
            return user is not None and (namespace == user or namespace in hub.orgs.get(user, []))

        def can_read(self, user: str | None, kind: str, repo_id: str) -> dict | None:
            meta = hub.meta(kind, repo_id)
            if meta is None or (meta["private"] and not self.can_write(user, meta["owner"])):
                return None
            return meta

        def not_found(self, head: bool = False) -> None:
            self.reply(404, error_code="RepoNotFound", message="Repository not found", head=head)

        # --- routes ----------------------------------------------------------------------------
        def do_HEAD(self) -> None:
            self.route("HEAD")

        def do_GET(self) -> None:
            self.route("GET")

        def do_POST(self) -> None:
            self.route("POST")

        def route(self, method: str) -> None:
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            hub.requests.append((method, path))
            authorization = self.headers.get("Authorization")
            if authorization and self.user() is None:
                # The Hub rejects unknown tokens everywhere, even on public resources.
                if method == "POST":
                    self.body()  # read the request before answering it
                self.reply(401, message="Invalid credentials in Authorization header", head=method == "HEAD")
                return
            repo = r"(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)"
            routes = [
                ("GET", r"/api/whoami-v2", self.whoami),
                ("POST", r"/api/repos/create", self.create),
                ("POST", r"/api/validate-yaml", self.validate_yaml),
                ("GET", rf"/api/{repo}(?:/revision/(?P<rev>[^/]+))?", self.info),
                ("POST", rf"/api/{repo}/preupload/(?P<rev>[^/]+)", self.preupload),
                ("POST", rf"/api/{repo}/commit/(?P<rev>[^/]+)", self.commit),
                ("POST", rf"/api/{repo}/branch/(?P<rev>[^/]+)", self.branch),
                ("GET", rf"/api/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
                ("POST", rf"/api/{repo}/paths-info/(?P<rev>[^/]+)", self.paths_info),
                (
                    "GET",
                    r"/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)",
                    self.resolve,
                ),
                (
                    "HEAD",
                    r"/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)",
                    self.resolve,
                ),
            ]
            for verb, pattern, action in routes:
                match = re.fullmatch(pattern, path)
                if verb == method and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    action(query=query, head=method == "HEAD", **args)
                    return
            self.reply(404, message=f"no route for {method} {path}", head=method == "HEAD")

        def whoami(self, query, head) -> None:
            user = self.user()
            if user is None:
                self.reply(401, message="Invalid credentials in Authorization header")
                return
            self.reply(
                200,
                {
                    "type": "user",
                    "name": user,
                    "orgs": [{"name": org} for org in hub.orgs.get(user, [])],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
                },
            )

        def create(self, query, head) -> None:
            payload = json.loads(self.body())
            user = self.user()
            if user is None:
                self.reply(401, message="You must be authenticated to create a repo")
                return
            namespace = payload.get("organization") or user
            kind = (payload.get("type") or "model") + "s"
            repo_id = f"{namespace}/{payload['name']}"
            with hub.lock:
                if hub.meta(kind, repo_id) is not None:
                    self.reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                    return
                if not self.can_write(user, namespace):
                    self.reply(
                        403, message=f'You don\'t have the rights to create a model under the namespace "{namespace}"'
                    )
                    return
                hub.create_repo(
                    kind,
                    repo_id,
                    owner=namespace,
                    private=payload.get("visibility") == "private" or bool(payload.get("private")),
                )
            self.reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def validate_yaml(self, query, head) -> None:
            content = json.loads(self.body())["content"]
            if content.startswith("---"):
                try:
                    yaml.safe_load(content.split("---")[1])
                except yaml.YAMLError as error:
                    self.reply(400, {"errors": [{"message": str(error)}]})
                    return
            self.reply(200, {"errors": [], "warnings": []})

        def info(self, kind, repo, query, head, rev="main") -> None:
            meta = self.can_read(self.user(), kind, repo)
            if meta is None:
                return self.not_found()
            snapshot = hub.snapshot(kind, repo, rev)
            if snapshot is None:
                return self.reply(404, error_code="RevisionNotFound", message=f"Invalid rev id: {rev}")
            files = [str(p.relative_to(snapshot)) for p in sorted(snapshot.rglob("*")) if p.is_file()]
            self.reply(
                200,
                {
                    "id": repo,
                    "_id": repo,
                    "author": meta["owner"],
                    "sha": snapshot.name,
                    "private": meta["private"],
                    "disabled": False,
                    "gated": False,
                    "tags": [],
                    "siblings": [{"rfilename": f} for f in files],
                },
            )

        def writable(self, kind, repo) -> dict | None:
            """Meta of a repo the caller may write to; otherwise replies 404/403 and returns None."""
            user = self.user()
            meta = self.can_read(user, kind, repo)
            if meta is None:
                self.not_found()
                return None
            if not self.can_write(user, meta["owner"]):
                self.reply(403, message=f"You don't have write access to {repo}")
                return None
            return meta

        def preupload(self, kind, repo, rev, query, head) -> None:
            payload = json.loads(self.body())
            if self.writable(kind, repo) is None:
                return
            snapshot = hub.snapshot(kind, repo, rev)
            answer = []
            for file in payload["files"]:
                existing = snapshot / file["path"] if snapshot else None
                oid = git_blob_id(existing.read_bytes()) if existing is not None and existing.is_file() else None
                answer.append({"path": file["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
            self.reply(200, {"files": answer, "commitOid": snapshot.name if snapshot else None})

        def commit(self, kind, repo, rev, query, head) -> None:
            hub.commit_arrived.set()
            if hub.hold_commits:  # the commit is in flight: a test may kill the client now
                hub._released.wait(120)
            lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
            if self.writable(kind, repo) is None:
                return
            with hub.lock:
                if hub.fail_commits > 0:
                    hub.fail_commits -= 1
                    self.reply(500, message="Internal Error - We're working hard to fix this as soon as possible!")
                    return
                if rev not in hub.meta(kind, repo)["branches"]:
                    self.reply(404, error_code="RevisionNotFound", message=f"Invalid rev id: {rev}")
                    return
                added, deleted, summary = {}, [], ""
                for line in lines:
                    if line["key"] == "header":
                        summary = line["value"]["summary"]
                    elif line["key"] == "file":
                        added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                    elif line["key"] == "deletedFile":
                        deleted.append(line["value"]["path"])
                    else:
                        self.reply(
                            400,
                            message=(
                                f"unsupported commit operation {line['key']} (this test hub stores files inline only)"
                            ),
                        )
                        return
                commit_id = hub.commit(kind, repo, rev, added, deleted, summary)
            self.reply(
                200,
                {
                    "success": True,
                    "commitOid": commit_id,
                    "commitUrl": f"{hub.url}/{repo}/commit/{commit_id}",
                    "pullRequestUrl": None,
                },
            )

        def branch(self, kind, repo, rev, query, head) -> None:
            payload = json.loads(self.body() or b"{}")
            meta = self.writable(kind, repo)
            if meta is None:
                return
            with hub.lock:
                if rev in meta["branches"]:
                    self.reply(409, message=f"Reference already exists: {rev}")
                    return
                meta["branches"][rev] = meta["branches"][payload.get("startingPoint") or "main"]
                hub.save_meta(kind, repo, meta)
            self.reply(200, {})

        def entries(self, snapshot: Path, paths) -> list[dict]:
            out = []
            for path in paths:
                if path.is_file():
                    out.append(
                        {
                            "type": "file",
                            "path": str(path.relative_to(snapshot)),
                            "size": path.stat().st_size,
                            "oid": git_blob_id(path.read_bytes()),
                        }
                    )
                elif path.is_dir():
                    out.append(
                        {"type": "directory", "path": str(path.relative_to(snapshot)), "size": 0, "oid": "0" * 40}
                    )
            return out

        def tree(self, kind, repo, rev, query, head, sub="") -> None:
            if self.can_read(self.user(), kind, repo) is None:
                return self.not_found()
            snapshot = hub.snapshot(kind, repo, rev)
            if snapshot is None:
                return self.reply(404, error_code="RevisionNotFound", message=f"Invalid rev id: {rev}")
            folder = snapshot / sub
            if not folder.is_dir():
                return self.reply(
                    404,
                    error_code="EntryNotFound",
                    message=f"{sub} does not exist",
                    headers={"X-Repo-Commit": snapshot.name},
                )
            recursive = query.get("recursive", ["False"])[0].lower() in ("true", "1")
            paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
            self.reply(200, self.entries(snapshot, paths))

        def paths_info(self, kind, repo, rev, query, head) -> None:
            body = self.body()
            if self.can_read(self.user(), kind, repo) is None:
                return self.not_found()
            snapshot = hub.snapshot(kind, repo, rev)
            if snapshot is None:
                return self.reply(404, error_code="RevisionNotFound", message=f"Invalid rev id: {rev}")
            try:
                wanted = json.loads(body)["paths"]
            except ValueError:
                wanted = parse_qs(body.decode()).get("paths", [])
            self.reply(200, self.entries(snapshot, [snapshot / p for p in wanted]))

        def resolve(self, repo, rev, file, query, head, prefix=None) -> None:
            kind = "datasets" if prefix else "models"
            if self.can_read(self.user(), kind, repo) is None:
                return self.not_found(head)
            snapshot = hub.snapshot(kind, repo, rev)
            if snapshot is None:
                return self.reply(404, error_code="RevisionNotFound", message=f"Invalid rev id: {rev}", head=head)
            target = snapshot / file
            if not target.is_file():
                return self.reply(
                    404,
                    error_code="EntryNotFound",
                    message=f"{file} does not exist",
                    headers={"X-Repo-Commit": snapshot.name},
                    head=head,
                )
            content = target.read_bytes()
            etag = f'"{git_blob_id(content)}"'
            self.reply(200, content, headers={"X-Repo-Commit": snapshot.name, "ETag": etag}, head=head)

    return Handler


def forbid_remote_connections(monkeypatch=None) -> None:
    """Make every connection to a host other than the loopback fail loudly (the tests' no-network guarantee)."""
    original_connect = socket.socket.connect
    original_getaddrinfo = socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise AssertionError(f"test tried to contact {address[0]}: only 127.0.0.1 is allowed")
        return original_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS and host is not None:
            raise AssertionError(f"test tried to resolve {host}: only 127.0.0.1 is allowed")
        return original_getaddrinfo(host, *args, **kwargs)

    if monkeypatch is not None:
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    else:
        socket.socket.connect = connect
        socket.getaddrinfo = getaddrinfo
