"""Starting `llmtune ui`: the safety rules (loopback unless a password is given, upload size) and the server.
Training runs as detached `llmtune train` processes, so the page never holds a model for training and closing it
stops nothing."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..common.errors import UserError

AUTH_ENV = "LLMTUNE_UI_AUTH"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_FILE_SIZE = "1mb"  # uploads: recipes are a few kB


def access_token(host: str, auth: str | None) -> str | None:
    """The password the page asks for: required for any host but this machine's loopback.

    Raises:
        UserError: listening beyond loopback without --auth or LLMTUNE_UI_AUTH.
    """
    token = auth or os.environ.get(AUTH_ENV) or None
    if token is None and host not in LOCAL_HOSTS:
        raise UserError(
            f"--host {host}: other machines could reach the UI; give a password with --auth or {AUTH_ENV}, "
            "or listen on 127.0.0.1"
        )
    return token


def serve_ui(workspace: Path, host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, echo=print) -> None:
    """Serve the UI for `workspace` until interrupted.

    Raises:
        UserError: no such workspace, a non-local host without a password, or Gradio missing.
    """
    token = access_token(host, auth)
    if not workspace.is_dir():
        raise UserError(f"--workspace {workspace}: no such directory")
    try:
        from .app import CSS, build
    except ImportError as error:
        raise UserError(f"llmtune ui needs the ui extra: pip install 'llmtune[ui]' ({error.name} is missing)") from None
    workspace = workspace.resolve()
    os.chdir(workspace)  # relative model and data paths mean the workspace's, here and in the runs it starts
    check = (lambda user, password: hmac.compare_digest(password.encode(), token.encode())) if token else None
    echo(
        f"llmtune ui: http://{host}:{port} (workspace {workspace})"
        + (" ; any user name, the --auth password" if token else "")
    )
    build(workspace).launch(
        server_name=host,
        server_port=port,
        auth=check,
        max_file_size=MAX_FILE_SIZE,
        quiet=True,
        show_error=False,
        footer_links=[],
        css=CSS,
    )
