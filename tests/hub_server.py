"""A local stand-in for the Hugging Face Hub, for tests: a real HTTP server on 127.0.0.1.

It implements the part of the Hub API that the unmodified `huggingface_hub` client calls to create
repos, commit files, read repo and revision info, list trees and resolve files (with the
X-Repo-Commit / ETag / Content-Length headers `file_download.py` checks), plus whoami.

Files travel the way they travel to the real Hub (without Xet: tests set HF_HUB_DISABLE_XET=1):

- small files that no `filter=lfs` pattern of the repo's .gitattributes names are "regular": base64 inside the
  NDJSON commit;
- the others are LFS files (the Hub's rule: an LFS pattern, or 10 MB and more): preupload answers "lfs", the
  client asks the LFS batch endpoint (`{repo}.git/info/lfs/objects/batch`) where to put each object, PUTs it to a
  separate storage server (another origin, like the Hub's S3 bucket: it must not receive the token), calls the
  verify action, and the commit names the object (`lfsFile`, sha256 and size). Downloads of LFS files are answered
  with a redirect to the storage server and the X-Linked-Etag / X-Linked-Size headers, as the Hub's CDN redirect.

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
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files this large in LFS whatever .gitattributes says


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
        # (method, path, carried an Authorization header) of every request to the LFS storage server
        self.storage_requests: list[tuple[str, str, bool]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.storage = ThreadingHTTPServer(("127.0.0.1", 0), _storage_handler(self))
        for server in (self.httpd, self.storage):
            server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.storage_url = f"http://127.0.0.1:{self.storage.server_address[1]}"
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.httpd, self.storage)]

    def release_commits(self) -> None:
        self._released.set()

    def __enter__(self) -> "HubServer":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self.httpd, self.storage):
            server.shutdown()
            server.server_close()

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

    def lfs_object(self, oid: str) -> Path:
        return self.root / "lfs-objects" / oid

    def store_lfs(self, oid: str, content: bytes) -> None:
        target = self.lfs_object(oid)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{oid}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(content)
        partial.replace(target)

    def is_lfs(self, snapshot: Path | None, path: str, size: int) -> bool:
        """The Hub's rule: a `filter=lfs` pattern of the repo's .gitattributes, or a large file."""
        attributes = snapshot / ".gitattributes" if snapshot else None
        lines = attributes.read_text().splitlines() if attributes and attributes.is_file() else []
        patterns = [line.split()[0] for line in lines if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        return size >= LFS_THRESHOLD or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)

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
                ("POST", r"/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
                ("POST", r"/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify", self.verify),
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
                lfs = hub.is_lfs(snapshot, file["path"], file["size"])
                existing = snapshot / file["path"] if snapshot else None
                content = existing.read_bytes() if existing is not None and existing.is_file() else None
                # The oid the client compares with its own to skip unchanged files: sha256 for LFS, git sha1 else.
                oid = None if content is None else hashlib.sha256(content).hexdigest() if lfs else git_blob_id(content)
                mode = "lfs" if lfs else "regular"
                answer.append({"path": file["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
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
                    elif line["key"] == "lfsFile":
                        stored = hub.lfs_object(line["value"]["oid"])
                        if not stored.is_file() or stored.stat().st_size != line["value"]["size"]:
                            self.reply(
                                422,
                                message=f"Your push was rejected because an LFS pointer pointed to a file that does "
                                f"not exist: {line['value']['path']}",
                            )
                            return
                        added[line["value"]["path"]] = stored.read_bytes()
                    elif line["key"] == "deletedFile":
                        deleted.append(line["value"]["path"])
                    else:
                        self.reply(
                            400,
                            message=(f"unsupported commit operation {line['key']} (no copies or folder deletes here)"),
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
                    content, name = path.read_bytes(), str(path.relative_to(snapshot))
                    entry = {"type": "file", "path": name, "size": len(content), "oid": git_blob_id(content)}
                    if hub.is_lfs(snapshot, name, len(content)):
                        sha256 = hashlib.sha256(content).hexdigest()
                        # git holds a pointer file for an LFS file: its blob is the entry's oid
                        pointer = (
                            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n"
                        )
                        entry["oid"] = git_blob_id(pointer.encode())
                        entry["lfs"] = {"oid": sha256, "size": len(content), "pointerSize": len(pointer)}
                    out.append(entry)
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
            headers = {"X-Repo-Commit": snapshot.name, "ETag": etag}
            if hub.is_lfs(snapshot, file, len(content)):
                sha256 = hashlib.sha256(content).hexdigest()
                # The Hub answers with a redirect to its CDN; the file's identity and size ride on the redirect.
                hub.store_lfs(sha256, content)
                location = f"{hub.storage_url}/objects/{sha256}"
                headers |= {"Location": location, "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content))}
                return self.reply(302, b"", headers=headers, head=head)
            self.reply(200, content, headers=headers, head=head)

        def lfs_batch(self, repo, query, head, prefix=None) -> None:
            payload = json.loads(self.body())
            if self.writable("datasets" if prefix else "models", repo) is None:
                return
            if payload.get("operation") != "upload" or payload.get("hash_algo", "sha256") != "sha256":
                return self.reply(422, message="only sha256 uploads are supported")
            verify = f"{hub.url}/{prefix or ''}{repo}.git/info/lfs/objects/verify"
            objects = []
            for obj in payload["objects"]:
                answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if not hub.lfs_object(obj["oid"]).is_file():  # an object already stored needs no upload
                    upload = f"{hub.storage_url}/objects/{obj['oid']}?size={obj['size']}"
                    answer["actions"] = {"upload": {"href": upload}, "verify": {"href": verify}}
                objects.append(answer)
            self.reply(200, {"transfer": "basic", "objects": objects})

        def verify(self, repo, query, head, prefix=None) -> None:
            payload = json.loads(self.body())
            if self.writable("datasets" if prefix else "models", repo) is None:
                return
            stored = hub.lfs_object(payload["oid"])
            if not stored.is_file() or stored.stat().st_size != payload["size"]:
                return self.reply(404, message=f"object {payload['oid']} was not uploaded")
            self.reply(200, {})

    return Handler


def _storage_handler(hub: HubServer):
    """The LFS object store (the Hub's S3 bucket and CDN): PUT an object to the URL the batch endpoint gave, GET it
    from the URL a resolve redirect gave. It checks that each object's bytes hash to its name."""

    class Storage(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def answer(self, status: int, data: bytes = b"", head: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def oid(self) -> str | None:
            match = re.fullmatch(r"/objects/(?P<oid>[0-9a-f]{64})", urlsplit(self.path).path)
            hub.storage_requests.append((self.command, urlsplit(self.path).path, "Authorization" in self.headers))
            return match["oid"] if match else None

        def do_PUT(self) -> None:
            oid, length = self.oid(), int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            if oid is None or hashlib.sha256(data).hexdigest() != oid:
                return self.answer(400, b"the uploaded bytes do not hash to the object's name")
            hub.store_lfs(oid, data)
            self.answer(200)

        def do_GET(self) -> None:
            oid = self.oid()
            stored = hub.lfs_object(oid) if oid else None
            if stored is None or not stored.is_file():
                return self.answer(404)
            self.answer(200, stored.read_bytes())

    return Storage


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
