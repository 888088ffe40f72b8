"""Checkpoints: written atomically, found and verified, and resumed from, whatever the engine or process count.

A checkpoint is a directory `RUN_DIR/checkpoints/step-N/`:

    trainable.safetensors   the trainable parameters (the whole model for full fine-tuning, the adapter
                            and the new head for adapter methods)
    optimizer.pt            the optimizer state, keyed by parameter name (tensors only; loaded with
                            torch.load(weights_only=True))
    state.json              the loop's TrainingState (step, data position, samples seen, best metric and
                            patience) and the learning-rate scheduler's state
    process-R.pt            per process R: the RNG states (python, numpy, torch, cuda) and the unlogged loss
    manifest.json           size and sha256 of every file above; written last

It is written to `checkpoints/.tmp-step-N` and renamed into place when complete, so a half-written
checkpoint never has its final name; a checkpoint whose files do not match its manifest (a truncated
file, a disk that filled up) is skipped with a warning. Only the main process writes.

Under FSDP each process holds a shard of every parameter and of its optimizer state; all processes gather them
into whole tensors on the main one, which writes the same files. So a checkpoint does not depend on the engine or
the process count: a sharded run resumes data-parallel, on one process, or sharded over another number.
DeepSpeed ZeRO's partitions are gathered and cut back the same way (deepspeed_zero.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file

from ..common import runs, sharding
from ..common.errors import Notice, UserError
from ..recipe import Recipe, dump_recipe
from . import deepspeed_zero
from .state import TrainingState

CHECKPOINTS_DIR = runs.CHECKPOINTS_DIR
MANIFEST = "manifest.json"
WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
STEP_DIR = re.compile(r"step-(\d+)")

# Recipe keys that must equal the original run's for a resume to continue the same training: what is
# trained (model, method), on what (data, task), and what fixes the batch order (seed, batch size, length).
# Anything else, such as max_steps, epochs or the learning-rate schedule, may change (extending a run).
RESUME_MUST_MATCH = (
    "model",
    "task",
    "data",
    "method",
    "training.seed",
    "training.batch_size",
    "training.max_tokens",
    "training.max_length",
)


# --------------------------------------------------------------------------- finding checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint directories (final names only), newest first."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.fullmatch(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def verify(path: Path) -> str | None:
    """None when every file matches the manifest; otherwise what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, expected {expected['size']}"
        if _sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def find_resumable(run_dir: Path, explicit: Path | None) -> Path:
    """The checkpoint to resume from: `explicit` if given, else the newest one that verifies.

    Raises:
        UserError: the explicit checkpoint is damaged, or the run has no complete checkpoint.
    """
    if explicit is not None:
        problem = verify(explicit)
        if problem:
            raise UserError(
                f"--resume {explicit}: checkpoint is incomplete or damaged ({problem}); "
                "pass another checkpoint or the run directory"
            )
        return explicit
    for path in checkpoint_dirs(run_dir):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: incomplete or damaged ({problem})", Notice, stacklevel=2)
    raise UserError(
        f"--resume: {run_dir} has no complete checkpoint under {CHECKPOINTS_DIR}/; start again with --overwrite"
    )


def resume_target(resume: bool | str | Path, default_run_dir: Path) -> tuple[Path, Path | None]:
    """(run directory, explicit checkpoint or None) for `--resume [PATH]`.

    PATH may be a run directory or one of its checkpoints; without PATH the recipe's run directory is used.
    """
    path = default_run_dir if resume is True or resume in ("", None) else Path(resume)
    explicit = None
    if (path / MANIFEST).is_file() or STEP_DIR.fullmatch(path.name):
        explicit, path = path, path.parent.parent
    if not (path / runs.RECIPE_FILE).is_file():
        raise UserError(
            f"--resume: {path} is not a run directory (no {runs.RECIPE_FILE}); "
            "expected the run directory or one of its checkpoints"
        )
    runs.check_writable(path, "--resume")
    return path, explicit


def check_same_recipe(run_dir: Path, recipe: Recipe) -> None:
    """Refuse to resume when the recipe changes what is trained or on what.

    Raises:
        UserError: naming every differing key.
    """
    saved = _flatten(yaml.safe_load((run_dir / runs.RECIPE_FILE).read_text(encoding="utf-8")) or {})
    current = _flatten(yaml.safe_load(dump_recipe(recipe)))
    for field in recipe.task.tuned_fields:  # settled by the finished run itself, not by its recipe
        for flat in (saved, current):
            for key in [k for k in flat if k == f"task.{field}" or k.startswith(f"task.{field}.")]:
                del flat[key]
    differing = sorted(
        key
        for key in set(saved) | set(current)
        if saved.get(key) != current.get(key) and any(key == k or key.startswith(k + ".") for k in RESUME_MUST_MATCH)
    )
    if differing:
        shown = "; ".join(f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in differing)
        raise UserError(
            f"--resume: the recipe differs from the one {run_dir} was started with in keys that must match ({shown}); "
            "use the original recipe, or start a new run with --output DIR"
        )


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


# --------------------------------------------------------------------------- saving


def save(run_dir: Path, accelerator, model, optimizer, scheduler, state: TrainingState, keep_last: int) -> Path:
    """Write `checkpoints/step-N` atomically and prune old ones (all processes call this; the main one writes).

    The best checkpoint (state.best_step) survives pruning.
    """
    window_loss = torch.as_tensor(state.window_loss).detach().cpu()
    process_states = gather_object([{"rng": capture_rng(), "window_loss": window_loss}])
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)  # plain names, as without compile
    weights, optimizer_state = whole_state(accelerator, unwrapped, optimizer)
    root = run_dir / CHECKPOINTS_DIR
    final = root / f"step-{state.step}"
    if accelerator.is_main_process:
        root.mkdir(exist_ok=True)
        temporary = root / f".tmp-step-{state.step}"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        save_file(weights, temporary / WEIGHTS)
        torch.save(optimizer_state, temporary / OPTIMIZER)
        (temporary / STATE).write_text(json.dumps({**state.shared(), "scheduler": scheduler.state_dict()}, indent=1))
        for rank, process_state in enumerate(process_states):
            torch.save(process_state, temporary / f"process-{rank}.pt")
        files = {}
        for file in sorted(temporary.iterdir()):
            _fsync(file)
            files[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
        (temporary / MANIFEST).write_text(json.dumps({"step": state.step, "files": files}, indent=1))
        _fsync(temporary / MANIFEST)
        if final.exists():
            _remove(final)
        os.replace(temporary, final)
        _prune(run_dir, keep_last, state.best_step)
    accelerator.wait_for_everyone()
    return final


def whole_state(accelerator, model, optimizer) -> tuple[dict, dict]:
    """The trainable weights and the optimizer state (keyed by parameter name), whole and on the CPU, on the main
    process; the other processes get empty dicts. All processes must call it: under FSDP or ZeRO it gathers the
    shards."""
    if deepspeed_zero.engaged(accelerator):
        return deepspeed_zero.whole_state(model, optimizer, accelerator.is_main_process)
    params = dict(model.named_parameters())
    trainable = [name for name, p in params.items() if p.requires_grad]
    if not (sharding.fsdp2_engaged(accelerator) or accelerator.is_main_process):
        return {}, {}
    # By hand rather than torch's get_optimizer_state_dict, which (torch 2.13, Accelerate's FSDP2) lost the
    # classifier bias's state on the second process (KeyError) when it had one element per process.
    weights = {name: _whole(params[name]).contiguous() for name in trainable}
    state = _plain(optimizer).state_dict()
    state["state"] = {
        i: {key: _whole(value) for key, value in moments.items()} for i, moments in state["state"].items()
    }
    if not accelerator.is_main_process:
        return {}, {}
    return weights, _by_name(state, _plain(optimizer))


def _whole(value):
    """A tensor on the CPU; an FSDP shard (DTensor) gathered into the whole tensor first (a collective: every
    process calls it, in the same order)."""
    if not isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return value.detach().cpu()


def _shard_like(value, like):
    """A whole tensor cut as the FSDP shard `like` is, this process's part kept (a collective, like _whole);
    anything else unchanged."""
    if not (hasattr(like, "device_mesh") and isinstance(value, torch.Tensor) and value.shape == like.shape):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)


def _plain(optimizer):
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _by_name(state: dict, optimizer) -> dict:
    """An optimizer state dict with parameter names in place of torch's running indices (the form FSDP's
    state-dict functions use), so that it no longer depends on how the optimizer was built."""
    return _renamed(state, _names_in_order(optimizer))


def _renamed(state: dict, names: list[str]) -> dict:
    groups = [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]]
    return {"state": {names[i]: value for i, value in state["state"].items()}, "param_groups": groups}


def _by_index(state: dict, optimizer) -> dict:
    """The inverse of _by_name, for this optimizer (older checkpoints, keyed by index, pass through)."""
    if _keyed_by_index(state):
        return state
    index = {name: i for i, name in enumerate(_names_in_order(optimizer))}
    groups = [{**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]]
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def _keyed_by_index(state: dict) -> bool:
    return all(isinstance(i, int) for group in state["param_groups"] for i in group["params"])


def _names_in_order(optimizer) -> list[str]:
    """The names of the optimizer's parameters in the order torch numbers them (group by group), from the names
    components.parameter_groups gives each group: FSDP may register new parameter objects, so identity cannot tell."""
    return [name for group in optimizer.param_groups for name in group["param_names"]]


def _prune(run_dir: Path, keep_last: int, keep_step: int | None) -> None:
    for path in checkpoint_dirs(run_dir)[keep_last:]:
        if path.name != f"step-{keep_step}":
            _remove(path)


def _remove(path: Path) -> None:
    """Rename first, so an interrupted deletion never leaves a damaged checkpoint under its final name."""
    doomed = path.with_name(f".tmp-delete-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


# --------------------------------------------------------------------------- loading


def load(path: Path, accelerator, model, optimizer, scheduler) -> tuple[TrainingState, dict]:
    """Restore weights, optimizer and schedule from a checkpoint; returns its TrainingState (with this process's
    unlogged loss) and this process's RNG states, which the loop restores at the right moment (see `restore_rng`)."""
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    optimizer_state = torch.load(path / OPTIMIZER, map_location="cpu", weights_only=True)
    if deepspeed_zero.engaged(accelerator):
        deepspeed_zero.load_state(
            unwrapped, optimizer, _checked_weights(path, unwrapped), _named(optimizer_state, path)
        )
    else:
        _load_state(path, accelerator, unwrapped, optimizer, optimizer_state)
    saved = json.loads((path / STATE).read_text())
    scheduler.load_state_dict(saved.pop("scheduler"))
    # The same process's states when the process count is unchanged; otherwise the main process's.
    own = path / f"process-{accelerator.process_index}.pt"
    process_state = torch.load(own if own.is_file() else path / "process-0.pt", map_location="cpu", weights_only=True)
    state = TrainingState(**saved, window_loss=process_state["window_loss"].to(accelerator.device))
    return state, process_state["rng"]


def _load_state(path: Path, accelerator, model, optimizer, optimizer_state: dict) -> None:
    """Weights and optimizer state into a data-parallel or FSDP-sharded model."""
    load_weights(path, model, accelerator)
    optimizer_state = _by_index(optimizer_state, _plain(optimizer))
    if sharding.fsdp2_engaged(accelerator):
        params = [p for group in _plain(optimizer).param_groups for p in group["params"]]
        optimizer_state["state"] = {
            i: {key: _shard_like(value, params[i]) for key, value in moments.items()}
            for i, moments in optimizer_state["state"].items()
        }
    optimizer.load_state_dict(optimizer_state)


def load_weights(path: Path, model, accelerator=None) -> None:
    """A checkpoint's trainable weights into `model` (every process reads the whole tensors; FSDP and ZeRO keep
    their shard).

    Raises:
        UserError: the checkpoint holds other weights than this model trains.
    """
    weights = _checked_weights(path, model)
    if deepspeed_zero.engaged(accelerator):
        deepspeed_zero.load_weights(model, weights)
        return
    sharded_model = sharding.fsdp2_engaged(accelerator)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name in sorted(weights):  # the same order in every process: cutting shards is a collective
            param = params[name]
            if sharded_model and hasattr(param, "to_local"):
                param.to_local().copy_(_shard_like(weights[name], param).to_local())
            else:
                param.copy_(weights[name])


def _checked_weights(path: Path, model) -> dict:
    weights = load_file(path / WEIGHTS)
    if set(weights) != {name for name, p in model.named_parameters() if p.requires_grad}:
        raise UserError(
            f"--resume: checkpoint {path} does not hold this model's trainable weights; "
            "was it written by another recipe?"
        )
    return weights


def _named(state: dict, path: Path) -> dict:
    """An optimizer state keyed by parameter name; one keyed by index (written before names) is renamed from the
    names its groups carry."""
    if not _keyed_by_index(state):
        return state
    names = [name for group in state["param_groups"] for name in group.get("param_names", [])]
    if len(names) != sum(len(group["params"]) for group in state["param_groups"]):
        raise UserError(
            f"--resume: checkpoint {path} keys its optimizer state by position, without parameter names; resume it "
            "without DeepSpeed"
        )
    return _renamed(state, names)


def capture_rng() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
