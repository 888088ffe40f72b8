"""Sharing runs: push a run's artifacts (allow-listed) with a model card to a model hub.

Everything goes through `huggingface_hub`, so HF_ENDPOINT, HF_TOKEN and a saved `hf auth login` are
honoured. The token is only ever handed to `huggingface_hub`; llmtune never prints or writes it.
Pulling a pushed run is `models.pull_run`; merging an adapter is `merge.py`.
"""

from __future__ import annotations

import fnmatch
import json
import tempfile
import time
from pathlib import Path

import yaml

from .. import tasks
from ..common import runs
from ..common.errors import UserError
from ..models.sources import REPO_ID, is_hub_id
from ..recipe import Recipe, dump_recipe
from ..tasks.base import metric_label
from ..tasks.card import PushedModel
from .merge import check_finished_run, merge

RUN_FILES = [runs.RECIPE_FILE, runs.METRICS_FILE]

# Waits between commit attempts when the hub fails (5xx) or the connection drops; a commit is atomic on the
# hub, so retrying the whole commit never leaves half of it behind.
RETRY_WAITS_S = (1.0, 2.0, 4.0)


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise UserError(
            f"--repo-id '{repo_id}': not a valid repository id; expected ORG/NAME (letters, digits, '-', '_', '.'; "
            "no '--' or '..'), for example my-org/sentiment-lora"
        )


def artifact_files(folder: Path, patterns: list[str]) -> list[Path]:
    """Files directly in `folder` whose names match the allow-list; nothing else is ever uploaded."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)
    )


# ---------------------------------------------------------------------------------------------- card


def split_scores(values: dict) -> dict[str, float]:
    """A split's numeric metrics: not counts or timings, not text such as sacreBLEU's signature."""
    return {
        name: value
        for name, value in values.items()
        if runs.is_metric(name) and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def model_card(
    recipe: Recipe, metrics: dict, repo_id: str, adapter: bool, revision: str | None = None, license: str | None = None
) -> str:
    """README.md for the pushed repo: Hub metadata (model-index holds the run's metrics), results, usage,
    hyper-parameters, recipe. What differs between tasks (pipeline, task name, metric names, usage snippet)
    comes from the task object; this stays generic.
    """
    task = tasks.create(recipe.task)
    base, name = recipe.model.name, repo_id.split("/")[1]
    not_splits = ("train", *runs.AUDIT_ENTRIES)
    evaluated = {
        split: values for split, values in metrics.items() if split not in not_splits and isinstance(values, dict)
    }
    metadata = card_metadata(recipe, task, evaluated, name, adapter, license)
    pushed = PushedModel(repo_id, base, adapter, revision, recipe.model.revision)
    snippet = task.usage_code(pushed, recipe.training.max_length)
    hyper = {"method": recipe.method.model_dump(mode="json"), "training": recipe.training.model_dump(mode="json")}
    if adapter:
        what = f"A {recipe.method.type} adapter for [{base}]"
    else:
        how = "full fine-tuning" if recipe.method.type == "full" else f"merged {recipe.method.type} adapter"
        what = f"[{base}] fine-tuned ({how})"
    return (
        "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n"
        f"# {name}\n\n"
        f"{what} for {task.card_description()}, trained with llmtune from the recipe below.\n\n"
        "## Results\n\n" + results_table(task, evaluated) + "\n"
        "## Usage\n\n```python\n" + snippet + "```\n\n"
        f"or with llmtune: `{eval_command(recipe, repo_id)}` and "
        f"`llmtune predict {repo_id} {predict_options(task)}`.\n\n"
        "## Training hyper-parameters\n\n```yaml\n" + yaml.safe_dump(hyper, sort_keys=False) + "```\n\n"
        "## Recipe\n\n```yaml\n" + dump_recipe(recipe) + "```\n"
    )


def card_metadata(recipe: Recipe, task, evaluated: dict, name: str, adapter: bool, license: str | None) -> dict:
    """The card's YAML header: base model, library, pipeline, tags, datasets, license, and the model-index results."""
    base = recipe.model.name
    task_type, task_name = task.hub_task
    metadata: dict = {"base_model": base} if is_hub_id(base) else {}
    metadata["library_name"] = "peft" if adapter else "transformers"
    metadata["pipeline_tag"] = task.pipeline_tag
    metadata["tags"] = ["llmtune", *dict.fromkeys([task_type, task.pipeline_tag]), recipe.method.type]
    if adapter and is_hub_id(base):
        metadata["tags"].append("base_model:adapter:" + base)
    datasets = sorted({source.hub for source in recipe.data.sources().values() if source.hub})
    if datasets:
        metadata["datasets"] = datasets
    if license:
        metadata["license"] = license
    results = []
    for split, values in evaluated.items():
        source = recipe.data.sources().get(split)
        dataset_name = (source.hub or Path(source.local_files()[0]).name) if source else split
        dataset = {"name": dataset_name, "type": source.hub if source and source.hub else dataset_name, "split": split}
        scores = [
            {"type": metric, "value": value, "name": f"{split} {metric}"}
            for metric, value in split_scores(values).items()
        ]
        results.append({"task": {"type": task_type, "name": task_name}, "dataset": dataset, "metrics": scores})
    metadata["model-index"] = [{"name": name, "results": results}]
    return metadata


def results_table(task, evaluated: dict) -> str:
    """The card's results: a Markdown table of every split's numeric metrics, then text metrics as notes."""
    columns = list(dict.fromkeys(metric for values in evaluated.values() for metric in split_scores(values)))
    header = "| split | " + " | ".join(metric_label(task, metric) for metric in columns) + " | examples |\n"
    rows = "".join(
        f"| {split} | "
        + " | ".join(f"{values[metric]:.4f}" if metric in values else "" for metric in columns)
        + f" | {values.get('num_examples', '')} |\n"
        for split, values in evaluated.items()
    )
    texts = {
        (metric, value)
        for values in evaluated.values()
        for metric, value in values.items()
        if runs.is_metric(metric) and isinstance(value, str)
    }
    notes = "".join(f"\n{metric_label(task, metric)}: `{value}`\n" for metric, value in sorted(texts))
    return header + "|---" * (len(columns) + 2) + "|\n" + rows + notes


def eval_command(recipe: Recipe, repo_id: str) -> str:
    """How the card's reader evaluates the model: on the recipe's test split if it is a hub dataset, else on a file."""
    test = recipe.data.test
    if test is not None and test.hub:
        return f"llmtune eval {repo_id}"
    return f"llmtune eval {repo_id} --data FILE"


def predict_options(task) -> str:
    """How `llmtune predict` is called for the task: `--text "..."`, `--question "..." --context "..."`."""
    return " ".join(f'--{field.replace("_", "-")} "..."' for field in task.input_columns())


# ---------------------------------------------------------------------------------------------- push


def push(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    merged: bool = False,
    commit_message: str | None = None,
    include: list[str] | tuple[str, ...] = (),
    license: str | None = None,
    echo=print,
) -> str:
    """Upload a finished run (adapter, or full / merged model) with a generated model card; returns the commit URL.

    Raises:
        UserError: bad repo id, unfinished run, no or rejected token, no write access, hub unreachable or failing.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

    check_repo_id(repo_id)
    if constants.HF_HUB_OFFLINE:
        raise UserError(
            "HF_HUB_OFFLINE is set, and a push must reach the hub; run it with HF_HUB_OFFLINE=0 (or unset); "
            "nothing was pushed"
        )
    run_dir = Path(run_dir)
    recipe = check_finished_run(run_dir)
    adapter = (run_dir / runs.ADAPTER_CONFIG).is_file()
    if merged and not adapter:
        raise UserError(f"--merged: {run_dir} is a full fine-tuning run; it is pushed as a full model without --merged")
    check_includes(run_dir, include)
    token = get_token()
    if token is None:
        raise UserError("no Hugging Face token: set HF_TOKEN or log in with `hf auth login`, then push again")
    api = HfApi()
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    recipe = public_recipe(recipe)

    with tempfile.TemporaryDirectory(prefix="llmtune-push-") as scratch:
        files = upload_files(run_dir, Path(scratch), recipe, merged, adapter, include)
        card = model_card(recipe, metrics, repo_id, adapter=adapter and not merged, revision=revision, license=license)
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
        size = sum(p.stat().st_size for p in files)
        echo(
            f"pushing {len(operations)} files ({size / 1e6:.1f} MB) to {repo_id}"
            + (f" (branch {revision})" if revision else "")
        )

        with _hub_errors(repo_id, api.endpoint):
            user = api.whoami(token=token)["name"]
            api.create_repo(repo_id, private=private, exist_ok=True, token=token)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
            message = commit_message or f"Upload {recipe.method.type} run from llmtune"
            info = _commit_with_retries(api, repo_id, operations, message, revision, token, echo)
    echo(f"pushed as {user}: {info.commit_url}")
    return info.commit_url


def upload_files(run_dir: Path, scratch: Path, recipe: Recipe, merged: bool, adapter: bool, include) -> list[Path]:
    """What a push uploads: the adapter or model (merged into `scratch` first if asked) with its tokenizer, the run's
    files, the --include matches, and the recipe without this machine's paths."""
    if merged:
        source = merge(run_dir, scratch / "merged")
        patterns = runs.MODEL_FILES + runs.TOKENIZER_FILES + RUN_FILES
    else:
        source = run_dir
        patterns = (runs.ADAPTER_FILES if adapter else runs.MODEL_FILES) + runs.TOKENIZER_FILES + RUN_FILES
    files = [p for p in artifact_files(source, patterns) if p.name != runs.RECIPE_FILE]
    files += [p for p in artifact_files(run_dir, list(include)) if p.name not in {f.name for f in files}]
    public = scratch / runs.RECIPE_FILE  # without this machine's paths
    runs.write_atomic(public, dump_recipe(recipe))
    files.append(public)
    return files


def check_includes(run_dir: Path, patterns) -> None:
    """Every --include pattern names files of the run directory itself, and at least one.

    Raises:
        UserError: a pattern that reaches outside the run directory, or matches no file.
    """
    for pattern in patterns:
        if "/" in pattern or "\\" in pattern or pattern.startswith(".."):
            raise UserError(
                f"--include {pattern}: names a path, not a file of {run_dir}; give a file name pattern of "
                "the run directory, e.g. train_log.jsonl or '*.png'"
            )
        if not artifact_files(run_dir, [pattern]):
            raise UserError(f"--include {pattern}: matches no file of {run_dir}; nothing was pushed")


def public_recipe(recipe: Recipe) -> Recipe:
    """The recipe as pushed: local data files by their names only and the run directory as runs/NAME, not this
    machine's absolute paths (hub datasets stay as they are). The model stays as named: an adapter's base model
    must load wherever the run is pulled."""

    def name(path: str | None) -> str | None:
        return Path(path).name if path else path

    data = recipe.data.model_copy(
        update={
            split: source.model_copy(
                update={
                    "path": name(source.path),
                    "parallel": {column: name(file) for column, file in source.parallel.items()}
                    if source.parallel
                    else None,
                }
            )
            for split, source in recipe.data.sources().items()
        }
    )
    return recipe.model_copy(update={"data": data, "output_dir": str(Path("runs") / Path(recipe.output_dir).name)})


def _commit_with_retries(api, repo_id, operations, message, revision, token, echo):
    """One atomic commit, retried with backoff on server errors and dropped connections."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    for attempt, wait in enumerate((*RETRY_WAITS_S, None), 1):
        try:
            return api.create_commit(repo_id, operations, commit_message=message, revision=revision, token=token)
        except (HfHubHTTPError, httpx2.TransportError) as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            transient = status is None or status >= 500 or status == 429
            if not transient or wait is None:
                raise
            echo(
                f"hub answered {status or type(error).__name__}; retrying in {wait:g}s "
                f"(attempt {attempt + 1} of {len(RETRY_WAITS_S) + 1})"
            )
            time.sleep(wait)


class _hub_errors:
    """Turn huggingface_hub / connection errors into one line for the user (never containing the token)."""

    def __init__(self, repo_id: str, endpoint: str):
        self.repo_id, self.endpoint = repo_id, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if error is None or isinstance(error, UserError):
            return False
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(error, httpx2.TransportError):
            raise UserError(
                f"cannot reach the hub at {self.endpoint} ({type(error).__name__}); "
                "check the network or HF_ENDPOINT; nothing was pushed"
            ) from None
        if not isinstance(error, HfHubHTTPError) or error.response is None:
            return False
        status = error.response.status_code
        server_says = error.server_message or error.response.headers.get("X-Error-Message") or ""
        detail = f" (hub says: {server_says.strip()})" if server_says else ""
        if status == 401:
            raise UserError(
                f"the hub at {self.endpoint} rejected the token (401){detail}; "
                "set a valid HF_TOKEN or run `hf auth login`"
            ) from None
        if status == 403:
            raise UserError(
                f"--repo-id {self.repo_id}: no write access (403){detail}; "
                f"the namespace '{self.repo_id.split('/')[0]}' "
                "belongs to another user or organisation, or the token is read-only"
            ) from None
        if status >= 500 or status == 429:
            raise UserError(
                f"the hub at {self.endpoint} kept failing ({status}){detail} after {len(RETRY_WAITS_S) + 1} attempts; "
                "nothing was committed; try again later"
            ) from None
        raise UserError(f"--repo-id {self.repo_id}: the hub refused the push ({status}){detail}") from None
