"""Push / pull / merge against a real HTTP hub on 127.0.0.1 (tests/hub_server.py),
with the unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MINILM_ID, RECIPES, ROOT, SHARED_DATA, write_recipe, write_sentiment_files
from hub_server import HubServer, forbid_remote_connections
from test_generative_seq2seq import GERMAN
from test_generative_seq2seq import translation_settings as gpt_translation_settings
from test_seq2seq import summarization_settings, tiny_marian, tiny_t5  # noqa: F401 (fixtures)
from test_seq2seq import translation_settings as marian_translation_settings

TOKEN = "hf_llmtuneTestSecretToken0123456789"
BOB_TOKEN = "hf_bobsOwnSecretToken9876543210"
ADAPTER_REPO_FILES = {
    ".gitattributes",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "metrics.json",
    "recipe.yaml",
    "tokenizer.json",
    "tokenizer_config.json",
}


def point_hub_client_at(monkeypatch, url: str, home: Path) -> None:
    """Send huggingface_hub (in this process and in child processes) to `url`, with a fresh cache and no saved login.

    huggingface_hub reads its environment once at import, so the in-process constants are set as well.
    """
    from huggingface_hub import constants, hf_api

    home.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS, the Hub's other upload path (no Xet server here)
    # Module-level helpers (huggingface_hub.file_exists, used by peft) share one HfApi made at import.
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.fixture()
def local_hub(tmp_path, monkeypatch):
    import llmtune.deploy.hub

    with HubServer(tmp_path / "hub-storage", {TOKEN: "alice", BOB_TOKEN: "bob"}, {"alice": ["acme"]}) as hub:
        forbid_remote_connections(monkeypatch)
        point_hub_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setattr(llmtune.deploy.hub, "RETRY_WAITS_S", (0.05, 0.1, 0.2))
        yield hub


def fresh_cache(monkeypatch, hub: HubServer, home: Path) -> None:
    point_hub_client_at(monkeypatch, hub.url, home)


def local_test_file(run: Path) -> str:
    from llmtune.recipe import load_recipe

    return load_recipe(run / "recipe.yaml").data.test.path


def data_args(run: Path) -> list[str]:
    """`--set data.test=...`: the run's test split as a pushed run cannot name it (its recipe names local files by
    their names only, not this machine's paths)."""
    from llmtune.recipe import load_recipe

    source = load_recipe(run / "recipe.yaml").data.test
    return ["--set", "data.test=" + json.dumps(source.model_dump(exclude_defaults=True))]


def assert_hub_eval_matches_local(cli, run, repo_id: str, hub: HubServer, monkeypatch, tmp_path) -> None:
    """`llmtune eval REPO_ID --data FILE` on a machine with an empty cache gives the run's own metrics."""
    code, _, err = cli("eval", run, "--output", tmp_path / "local.json")
    assert code == 0, err
    fresh_cache(monkeypatch, hub, tmp_path / "another-machine")
    code, _, err = cli("eval", repo_id, *data_args(run), "--output", tmp_path / "hub.json")
    assert code == 0, err
    hub_metrics, local_metrics = (json.loads((tmp_path / name).read_text()) for name in ("hub.json", "local.json"))
    assert hub_metrics.pop("runtime_s") > 0 and local_metrics.pop("runtime_s") > 0  # the only figure allowed to differ
    assert hub_metrics == local_metrics


@pytest.fixture(scope="module")
def tiny_runs(tiny_bert, tmp_path_factory):
    """A finished tiny LoRA run and a finished tiny full fine-tuning run (seconds each)."""
    from llmtune import train
    from llmtune.recipe import load_recipe

    folder = tmp_path_factory.mktemp("tiny-runs")
    files = write_sentiment_files(folder, repeat=6)
    made = {}
    for method in ("lora", "full"):
        recipe = write_recipe(folder / f"{method}.yaml", tiny_bert, files, extra=f"method:\n  type: {method}\n")
        made[method] = train(load_recipe(recipe), output_dir=folder / f"run-{method}", echo=lambda *a: None).run_dir
    return made


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


# ------------------------------------------------------------------------------------------ push / pull


def test_push_uploads_only_the_run_artifacts_and_eval_of_the_hub_id_matches_the_run(
    tiny_runs, local_hub, cli, tmp_path, monkeypatch
):
    run = copy_run(tiny_runs["lora"], tmp_path)
    (run / ".env").write_text("HF_TOKEN=do-not-upload\n")
    (run / "checkpoint-5").mkdir()
    (run / "checkpoint-5" / "optimizer.pt").write_bytes(b"state")
    (run / "notes.txt").write_text("private notes")

    code, out, err = cli("push", run, "--repo-id", "acme/tiny-lora")
    assert code == 0, err
    assert "acme/tiny-lora" in out
    pushed = local_hub.files("acme/tiny-lora")
    assert set(pushed) == ADAPTER_REPO_FILES
    assert pushed["adapter_model.safetensors"] == (run / "adapter_model.safetensors").read_bytes()
    assert (
        json.loads(pushed["adapter_config.json"])["base_model_name_or_path"]
        == json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    # The pushed recipe and card name the data files, not this machine's paths (the run's own recipe has them).
    data_folder = str(Path(local_test_file(run)).parent)
    assert data_folder in (run / "recipe.yaml").read_text()
    assert data_folder not in pushed["recipe.yaml"].decode() and data_folder not in pushed["README.md"].decode()
    assert "test: test.csv" in pushed["recipe.yaml"].decode() or "path: test.csv" in pushed["recipe.yaml"].decode()

    assert_hub_eval_matches_local(cli, run, "acme/tiny-lora", local_hub, monkeypatch, tmp_path)
    assert any(("another-machine" in str(p)) for p in (tmp_path / "another-machine").rglob("adapter_model.safetensors"))
    code, predicted, err = cli("predict", "acme/tiny-lora", "--text", "I loved every minute")
    code_local, predicted_local, _ = cli("predict", run, "--text", "I loved every minute")
    assert code == 0 and code_local == 0 and predicted == predicted_local


def test_model_card_parses_and_holds_the_runs_metrics(tiny_runs, local_hub, cli, tmp_path):
    from huggingface_hub import ModelCard

    run = tiny_runs["lora"]
    code, _, err = cli("push", run, "--repo-id", "acme/carded", "--license", "apache-2.0")
    assert code == 0, err
    card = ModelCard.load("acme/carded")
    assert card.data.library_name == "peft"
    assert card.data.pipeline_tag == "text-classification"
    assert card.data.license == "apache-2.0"
    metrics = json.loads((run / "metrics.json").read_text())
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {
        (split, name): value
        for split in ("validation", "test")
        for name, value in metrics[split].items()
        if name not in ("num_examples", "runtime_s")
    }
    assert found == expected
    assert "PeftModel.from_pretrained" in card.text and "```yaml" in card.text


def test_full_run_pushes_the_model_and_merged_push_is_a_standalone_model(
    tiny_runs, local_hub, cli, tmp_path, monkeypatch
):
    code, _, err = cli("push", tiny_runs["full"], "--repo-id", "alice/tiny-full")
    assert code == 0, err
    assert {"config.json", "model.safetensors"} <= set(local_hub.files("alice/tiny-full"))
    assert "adapter_config.json" not in local_hub.files("alice/tiny-full")
    # The weights took the real Hub's LFS path: batch endpoint, one PUT to the storage server (never given the
    # token), then the commit names the object; the small files travelled inline.
    assert ("POST", "/alice/tiny-full.git/info/lfs/objects/batch") in local_hub.requests
    assert [method for method, *_ in local_hub.storage_requests] == ["PUT"]
    weights = (tiny_runs["full"] / "model.safetensors").read_bytes()
    assert local_hub.storage_requests[0][1] == f"/objects/{hashlib.sha256(weights).hexdigest()}"

    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/tiny-merged", "--merged")
    assert code == 0, err
    files = set(local_hub.files("acme/tiny-merged"))
    assert {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "metrics.json",
    } <= files and "adapter_config.json" not in files
    code, local, _ = cli("eval", tiny_runs["lora"])
    code2, pulled, err = cli("eval", "acme/tiny-merged", *data_args(tiny_runs["lora"]))
    assert code == 0 and code2 == 0, err
    assert pulled.split("(n=")[0] == local.split("(n=")[0] or _close_metrics(pulled, local)
    # The pull followed the Hub's redirect for the LFS weights to the storage server, without the token.
    assert [m for m, *_ in local_hub.storage_requests].count("GET") == 1
    assert not any(authorized for *_, authorized in local_hub.storage_requests)


def _close_metrics(a: str, b: str) -> bool:
    def parse(line):
        return {k: float(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split("(n=")[0].split())}

    first, second = parse(a), parse(b)
    return first.keys() == second.keys() and all(abs(first[k] - second[k]) < 1e-4 for k in first)


def test_push_to_a_branch_leaves_main_alone(tiny_runs, local_hub, cli):
    code, _, err = cli(
        "push",
        tiny_runs["lora"],
        "--repo-id",
        "acme/branched",
        "--revision",
        "experiment",
        "--commit-message",
        "try r=8",
    )
    assert code == 0, err
    assert set(local_hub.files("acme/branched", "main")) == {".gitattributes"}
    assert set(local_hub.files("acme/branched", "experiment")) == ADAPTER_REPO_FILES
    assert local_hub.meta("models", "acme/branched")["commits"][-1]["message"] == "try r=8"


def test_the_token_is_never_printed_or_written(tiny_runs, local_hub, cli, tmp_path, monkeypatch):
    run = copy_run(tiny_runs["lora"], tmp_path)
    outputs = []
    outputs.append(cli("push", run, "--repo-id", "acme/secret-safe"))
    outputs.append(cli("push", run, "--repo-id", "bob/not-mine"))  # fails: 403
    outputs.append(cli("eval", "acme/secret-safe", *data_args(run)))
    outputs.append(cli("merge", run, "--output", tmp_path / "merged"))
    monkeypatch.setenv("HF_TOKEN", TOKEN + "x")
    outputs.append(cli("push", run, "--repo-id", "acme/secret-safe"))  # fails: 401
    assert [code for code, _, _ in outputs] == [0, 2, 0, 0, 2]
    for _, out, err in outputs:
        assert TOKEN not in out and TOKEN not in err
    # The run directory, the merged model, the pushed repo (card included), the download cache, logs.
    assert files_containing(tmp_path, TOKEN.encode()) == []
    assert local_hub.files("acme/secret-safe")  # the check above did look at pushed files


# ------------------------------------------------------------------------------------------ bad input and faults


@pytest.mark.parametrize("repo_id", ["no-slash", "a/b/c", "-org/name", "org/na me", "org/name--x", "org/"])
def test_malformed_repo_id(tiny_runs, local_hub, cli, repo_id):
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", repo_id)
    assert code == 2
    assert err.startswith(f"error: --repo-id '{repo_id}': not a valid repository id; expected ORG/NAME")
    assert local_hub.requests == []


def test_no_token(tiny_runs, local_hub, cli, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/x")
    assert code == 2
    assert err == "error: no Hugging Face token: set HF_TOKEN or log in with `hf auth login`, then push again\n"
    assert local_hub.requests == []


def test_saved_login_is_used_when_no_env_token(tiny_runs, local_hub, cli, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/from-login")
    assert code == 0, err
    assert "README.md" in local_hub.files("acme/from-login")


def test_rejected_token(tiny_runs, local_hub, cli, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_revokedToken")
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/x")
    assert code == 2
    assert err.startswith("error: the hub at http://127.0.0.1:") and "rejected the token (401)" in err
    assert len(err.splitlines()) == 1 and "hf_revokedToken" not in err
    assert local_hub.meta("models", "acme/x") is None


def test_repo_of_someone_else(tiny_runs, local_hub, cli):
    local_hub.create_repo("models", "bob/sentiment", owner="bob")
    for repo_id in ("bob/sentiment", "bob/new-repo"):  # existing repo of another user; namespace of another user
        code, _, err = cli("push", tiny_runs["lora"], "--repo-id", repo_id)
        assert code == 2
        assert err.startswith(f"error: --repo-id {repo_id}: no write access (403)") and "belongs to another user" in err
        assert len(err.splitlines()) == 1
    assert local_hub.commit_count("bob/sentiment") == 1 and local_hub.meta("models", "bob/new-repo") is None


def test_hub_unreachable(tiny_runs, local_hub, cli, monkeypatch, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    point_hub_client_at(monkeypatch, closed, tmp_path / "home-offline")
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/x")
    assert code == 2
    assert (
        err == f"error: cannot reach the hub at {closed} (ConnectError); "
        "check the network or HF_ENDPOINT; nothing was pushed\n"
    )


def test_commit_failures_are_retried_then_succeed(tiny_runs, local_hub, cli):
    local_hub.fail_commits = 2
    code, out, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/flaky")
    assert code == 0, err
    assert out.count("hub answered 500; retrying") == 2
    assert set(local_hub.files("acme/flaky")) == ADAPTER_REPO_FILES
    assert local_hub.commit_count("acme/flaky") == 2  # repo creation + one upload, no duplicates


def test_hub_failing_on_every_commit_leaves_nothing_half_committed(tiny_runs, local_hub, cli):
    local_hub.fail_commits = 100
    code, out, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/down")
    assert code == 2
    assert (
        err.startswith("error: the hub at http://127.0.0.1:")
        and "kept failing (500)" in err
        and "nothing was committed" in err
    )
    assert out.count("retrying") == 3
    assert set(local_hub.files("acme/down")) == {".gitattributes"} and local_hub.commit_count("acme/down") == 1


def test_unfinished_run(tiny_runs, local_hub, cli, tmp_path):
    run = copy_run(tiny_runs["lora"], tmp_path)
    (run / "metrics.json").unlink()
    code, _, err = cli("push", run, "--repo-id", "acme/x")
    assert (code, err) == (
        2,
        f"error: {run}: not a finished llmtune run (no metrics.json); train it to the end first\n",
    )
    code, _, err = cli("push", tmp_path / "missing", "--repo-id", "acme/x")
    assert (code, err) == (2, f"error: {tmp_path / 'missing'}: no such run directory\n")
    code, _, err = cli("merge", run, "--output", tmp_path / "merged")
    assert code == 2 and "not a finished llmtune run" in err
    assert local_hub.requests == [] and not (tmp_path / "merged").exists()


# ------------------------------------------------------------------------------------------ merge


def test_merge_matches_the_adapter_and_loads_with_plain_transformers(tiny_runs, cli, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmtune.recipe import load_recipe

    run = tiny_runs["lora"]
    code, out, err = cli("merge", run, "--output", tmp_path / "merged")
    assert code == 0, err
    recipe = load_recipe(run / "recipe.yaml")
    labels = recipe.task.label_names
    base = AutoModelForSequenceClassification.from_pretrained(recipe.model.name, num_labels=len(labels))
    adapter = PeftModel.from_pretrained(base, str(run)).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name in merged.state_dict())
    assert merged.config.id2label == dict(enumerate(labels))
    batch = tokenizer(["a wonderful, moving film", "dull and far too long", "so-so"], padding=True, return_tensors="pt")
    with torch.no_grad():
        difference = (adapter(**batch).logits - merged(**batch).logits).abs().max().item()
    assert difference <= 1e-4

    code, _, err = cli("merge", run, "--output", tmp_path / "merged")
    assert code == 2 and "already holds" in err
    code, _, err = cli("merge", tiny_runs["full"], "--output", tmp_path / "merged-full")
    assert code == 2 and "nothing to merge" in err and not (tmp_path / "merged-full").exists()


# ------------------------------------------------------------------------------------------ the real round trip


def run_guarded(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run Python in a child process whose sockets may only reach 127.0.0.1."""
    prelude = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
        "import hub_server; hub_server.forbid_remote_connections(); "
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + args[0], *args[1:]],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_minilm_lora_round_trip_through_the_hub(minilm_path, local_hub, cli, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard

    # The hub serves MiniLM too, so the pulled adapter's base model comes through the real download path.
    local_hub.add_repo_from_dir(MINILM_ID, minilm_path)
    run = tmp_path / "run"
    code, out, err = cli(
        "train", RECIPES / "sentiment.yaml", "--set", "method.type=lora", "--set", "training.epochs=1", "--output", run
    )
    assert code == 0, err
    code, _, err = cli("eval", run, "--output", tmp_path / "local.json")
    assert code == 0, err

    code, out, err = cli("push", run, "--repo-id", "acme/minilm-sentiment-lora")
    assert code == 0, err
    pushed = local_hub.files("acme/minilm-sentiment-lora")
    assert set(pushed) == ADAPTER_REPO_FILES
    assert sum(len(content) for content in pushed.values()) < 10_000_000

    card = ModelCard(pushed["README.md"].decode())
    assert card.data.base_model == MINILM_ID and card.data.library_name == "peft"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == {
        (split, name): value
        for split in ("validation", "test")
        for name, value in metrics[split].items()
        if name not in ("num_examples", "runtime_s")
    }

    # Another machine: a fresh cache, only the hub's HTTP API, in a separate process configured by environment alone.
    home = tmp_path / "elsewhere"
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": TOKEN,
    }
    evaluated = run_guarded(
        [
            "from llmtune.cli import main; sys.argv = ['llmtune'] + sys.argv[1:]; main()",
            "eval",
            "acme/minilm-sentiment-lora",
            *data_args(run),  # the pushed recipe names its data files, not this machine's paths
            "--output",
            str(tmp_path / "hub.json"),
        ],
        env,
        ROOT,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    hub_metrics, local_metrics = (json.loads((tmp_path / name).read_text()) for name in ("hub.json", "local.json"))
    assert hub_metrics.pop("runtime_s") > 0 and local_metrics.pop("runtime_s") > 0  # the only figure allowed to differ
    assert hub_metrics == local_metrics
    assert (home / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2").is_dir()  # the base came from the hub

    # The card's usage snippet, run as written: plain transformers + PeftModel.from_pretrained(base, "ORG/NAME").
    snippet = card.text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "snippet.py").write_text(snippet)
    ran = run_guarded(
        [f"exec(open({str(tmp_path / 'snippet.py')!r}).read())"], {**env, "HF_HOME": str(tmp_path / "third")}, tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    probabilities = eval(ran.stdout.strip().splitlines()[-1])
    assert set(probabilities) == {"negative", "positive"} and abs(sum(probabilities.values()) - 1) < 1e-3


def test_include_adds_named_run_files_only(tiny_runs, local_hub, cli):
    code, _, err = cli("push", tiny_runs["lora"], "--repo-id", "acme/with-log", "--include", "train_log.jsonl")
    assert code == 0, err
    assert set(local_hub.files("acme/with-log")) == ADAPTER_REPO_FILES | {"train_log.jsonl"}


# ------------------------------------------------------------------------------------------ cards of the other tasks


def train_tiny(recipe: str, settings: list[str], run: Path) -> Path:
    from llmtune import train
    from llmtune.recipe import load_recipe

    return train(load_recipe(RECIPES / recipe, settings), output_dir=run, echo=lambda *a: None).run_dir


@pytest.fixture(scope="module")
def t5_summarization_run(tiny_t5, tmp_path_factory):
    """Full fine-tuning of the tiny T5 with T5's `summarize: ` prefix."""
    run = tmp_path_factory.mktemp("t5-summarization") / "run"
    return train_tiny(
        "summarization.yaml",
        summarization_settings(
            tiny_t5, run, "task.prefix='summarize: '", "training.epochs=2", "data.train.max_samples=16"
        ),
        run,
    )


@pytest.fixture(scope="module")
def llama_translation_run(tiny_llama, tmp_path_factory):
    """LoRA on the tiny Llama, translating through its chat template."""
    run = tmp_path_factory.mktemp("llama-translation") / "run"
    return train_tiny(
        "translation-gpt.yaml",
        gpt_translation_settings(tiny_llama, run, "task.chat_template=true", "training.epochs=1"),
        run,
    )


@pytest.fixture(scope="module")
def qa_run(tiny_bert, tmp_path_factory):
    """LoRA extractive question answering on the tiny BERT (the span head is trained and saved with the adapter)."""
    run = tmp_path_factory.mktemp("qa") / "run"
    xquad = SHARED_DATA / "xquad" / "xquad.en.json"
    settings = [
        f"model.name={tiny_bert}",
        f"data.train={{path: {xquad}, max_samples: 24}}",
        f"data.validation={{path: {xquad}, max_samples: 8}}",
        f"data.test={{path: {xquad}, max_samples: 8}}",
        "training.max_length=128",
        "task.doc_stride=32",
        "training.min_steps=null",
        "training.epochs=1",
        "training.batch_size=8",
        "method={type: lora}",
        f"output_dir={run}",
    ]
    return train_tiny("qa.yaml", settings, run)


def card_of(run: Path, repo_id: str = "acme/card") -> str:
    from llmtune.deploy.hub import model_card
    from llmtune.recipe import load_recipe

    metrics = json.loads((run / "metrics.json").read_text())
    return model_card(
        load_recipe(run / "recipe.yaml"), metrics, repo_id, adapter=(run / "adapter_config.json").is_file()
    )


def card_snippet(card: str) -> str:
    return card.split("```python\n", 1)[1].split("```", 1)[0]


def run_snippet(snippet: str, replace: dict[str, str]) -> str:
    """Run a card's usage snippet with plain transformers / peft in a child process; its last printed line."""
    for old, new in replace.items():
        assert old in snippet, old
        snippet = snippet.replace(old, new)
    ran = subprocess.run(
        [sys.executable, "-c", snippet],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.splitlines()[-1]


# pipeline tag, model-index task type, results-table columns
CARD_EXPECTATIONS = {
    "t5_summarization_run": (
        "summarization",
        "summarization",
        ["ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum", "distinct outputs (share)", "cross-entropy", "perplexity"],
    ),
    "llama_translation_run": (
        "text-generation",
        "translation",
        ["BLEU", "chrF", "distinct outputs (share)", "cross-entropy", "perplexity"],
    ),
    "qa_run": ("question-answering", "question-answering", ["exact match", "F1", "cross-entropy"]),
}


@pytest.mark.parametrize("name", list(CARD_EXPECTATIONS))
def test_card_of_each_task_has_its_pipeline_task_type_and_metrics(name, request):
    from huggingface_hub import ModelCard

    from llmtune.common.runs import is_metric

    run = request.getfixturevalue(name)
    pipeline_tag, task_type, columns = CARD_EXPECTATIONS[name]
    card = ModelCard(card_of(run))
    assert card.data.pipeline_tag == pipeline_tag
    assert card.data.library_name == ("peft" if (run / "adapter_config.json").is_file() else "transformers")
    assert {result.task_type for result in card.data.eval_results} == {task_type}
    metrics = json.loads((run / "metrics.json").read_text())
    expected = {
        (split, metric): value
        for split in ("validation", "test")
        for metric, value in metrics[split].items()
        if is_metric(metric) and not isinstance(value, str)
    }
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results} == expected
    header = next(line for line in card.text.splitlines() if line.startswith("| split |"))
    assert header == "| split | " + " | ".join(columns) + " | examples |"
    if "signature" in metrics["test"]:  # text, so a note under the table rather than a column
        assert f"sacreBLEU signature: `{metrics['test']['signature']}`" in card.text


@pytest.mark.parametrize(
    "name, text",
    [
        ("t5_summarization_run", "Two people walk along a beach at sunset. They carry surfboards."),
        ("llama_translation_run", GERMAN[0]),
    ],
    ids=["t5-summarization", "llama-chat-translation"],
)
def test_generation_snippet_writes_what_llmtune_predict_writes(name, text, request):
    """The snippet, loading from the run directory instead of the repo, with plain transformers / peft only."""
    from llmtune import predict, tasks
    from llmtune.recipe import load_recipe
    from llmtune.tasks.card import literal

    run = request.getfixturevalue(name)
    example = tasks.create(load_recipe(run / "recipe.yaml").task).example_source()
    printed = run_snippet(
        card_snippet(card_of(run)), {'"acme/card"': literal(str(run)), literal(example): literal(text)}
    )
    predicted = predict(run, [text])[0]["predicted"]
    assert predicted and printed == predicted


def test_qa_snippet_finds_the_span_llmtune_predict_finds(qa_run):
    from llmtune import predict
    from llmtune.tasks.card import literal
    from llmtune.tasks.question_answering import EXAMPLE

    printed = run_snippet(card_snippet(card_of(qa_run)), {'"acme/card"': literal(str(qa_run))})
    answer = predict(qa_run, [EXAMPLE])[0]["predicted"]
    assert answer and printed == answer


def test_marian_push_runs_from_the_hub_with_its_card(tiny_marian, local_hub, cli, tmp_path, monkeypatch):
    """End to end for a translation model: its own tokenizer files go up, `llmtune eval ORG/NAME` matches the run,
    and the card's snippet, as written, loads the repo from the hub and translates as `llmtune predict` does."""
    from huggingface_hub import ModelCard

    run = tmp_path / "run"
    train_tiny(
        "translation.yaml",
        marian_translation_settings(tiny_marian, run, "training.epochs=2", "evaluation.every_n_steps=null"),
        run,
    )
    code, _, err = cli("push", run, "--repo-id", "acme/tiny-de-en")
    assert code == 0, err
    assert {"source.spm", "target.spm", "vocab.json", "model.safetensors"} <= set(local_hub.files("acme/tiny-de-en"))
    card = ModelCard.load("acme/tiny-de-en")
    assert card.data.pipeline_tag == "translation" and "llmtune predict acme/tiny-de-en --text" in card.text

    assert_hub_eval_matches_local(cli, run, "acme/tiny-de-en", local_hub, monkeypatch, tmp_path)

    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        card_snippet(card.content).replace('"<German text to translate>"', json.dumps(GERMAN[0], ensure_ascii=False))
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.url,
        "HF_HOME": str(tmp_path / "third"),
        "HF_HUB_OFFLINE": "0",
        "PYTHONIOENCODING": "utf-8",
    }
    ran = run_guarded([f"exec(open({str(snippet)!r}).read())"], env, tmp_path)
    assert ran.returncode == 0, ran.stderr
    from llmtune import predict

    assert ran.stdout.splitlines()[-1] == predict(run, [GERMAN[0]])[0]["predicted"]
