"""The shared half of generative tasks: prompt -> completion fine-tuning of a causal language model.

A generative task subclasses `PromptCompletionTask` and says only what is task-specific: its
default template, the columns it needs, the target text of a row, and how generated texts are
scored. Preprocessing, the completion-only loss (with optional packing), evaluation by generation
plus cross-entropy / perplexity of the gold completions, and prediction are here.
"""

from __future__ import annotations

import math

import datasets
import torch
from transformers import AutoModelForCausalLM

from .. import prompting
from ..data import describe, require_columns, row_location, tokenization_fingerprint
from ..errors import UserError
from ..recipe import DataSpec
from .card import PushedModel, causal_lm_usage, example_row
from .outputs import CollectedOutputs


class PromptCompletionTask:
    auto_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    metadata_columns: tuple[str, ...] = ()
    label_names = None
    prediction_key = "completion"  # the key `predict` puts the generated text under
    pipeline_tag = "text-generation"

    def __init__(self, options):
        self.options = options
        self.template = options.prompt_template or self.default_template()
        self.tokenizer = None  # set by setup(); decoding generated tokens needs it
        self.max_length = None  # set by preprocess(); the packing row length

    # ------------------------------------------------------------------ what a task says

    def default_template(self) -> str:
        raise NotImplementedError

    def input_columns(self) -> dict[str, str]:
        """`{recipe key: column}` of the task's input columns (checked when the template uses them)."""
        raise NotImplementedError

    def target_column(self) -> tuple[str, str]:
        """(recipe key, column) holding the targets: needed to train, scored where a split has it."""
        raise NotImplementedError

    def target(self, row: dict, where: str) -> str | None:
        """The completion a row teaches (None when the row has no target, e.g. at prediction)."""
        raise NotImplementedError

    def score(self, predictions: list[str], dataset: datasets.Dataset) -> dict[str, float]:
        """Task metrics of the generated texts against the split's references."""
        raise NotImplementedError

    def prediction_row(self, row: dict, index: int, text: str) -> dict:
        """One line of predictions.jsonl: the example's id and inputs worth showing, the generated text, the references."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checks

    def prepare(self, splits: dict[str, datasets.Dataset], spec: DataSpec) -> None:
        """Check the task's columns and the template's columns in every split, and every training target.

        Raises:
            UserError: a missing column (naming the recipe key), or a row without a target text.
        """
        sources = spec.sources()
        used = prompting.prompt_columns(self.template)
        target_key, target_column = self.target_column()
        for split, dataset in splits.items():
            where = describe(split, sources[split])
            columns = {key: column for key, column in self.input_columns().items() if column in used}
            if split == "train":
                columns[target_key] = target_column
            require_columns(dataset, columns, where)
            prompting.check_template_columns(self.template, "task.prompt_template", dataset.column_names, where)
            if split == "train":
                for row, example in enumerate(dataset):
                    target = self.target(example, f"{where} {row_location(sources[split], row)}")
                    if not target or not target.strip():
                        raise UserError(
                            f"{where} {row_location(sources[split], row)}: empty target text; every training example needs one"
                        )

    # ------------------------------------------------------------------ model

    def model_kwargs(self) -> dict:
        return {}

    def setup(self, config, tokenizer) -> None:
        """Check the tokenizer (EOS, chat template if asked for) and keep it for decoding.

        Raises:
            UserError: no EOS token, or no chat template when task.chat_template is set.
        """
        prompting.check_tokenizer(tokenizer, tokenizer.name_or_path, self.options.chat_template)
        self.tokenizer = tokenizer

    def preprocess(self, dataset: datasets.Dataset, tokenizer, max_length: int) -> datasets.Dataset:
        """Per example: prompt + completion + EOS token ids, labels only on the completion, the prompt length."""
        self.max_length = max_length
        chat = self.options.chat_template
        has_targets = self.target_column()[1] in dataset.column_names

        def encode(example, index):
            prompt, lead = prompting.render_prompt(self.template, example, tokenizer, chat)
            target = self.target(example, "") if has_targets else None
            features = prompting.encode_example(
                tokenizer, prompt, lead + target if target else None, max_length, chat, self.options.max_new_tokens
            )
            return {**features, "index": index, "length": len(features["input_ids"])}

        fingerprint = tokenization_fingerprint(
            dataset, tokenizer, f"{type(self).__name__}/1", self.options.model_dump(), self.template, max_length
        )
        return dataset.map(
            encode,
            with_indices=True,
            remove_columns=dataset.column_names,
            desc="Tokenizing",
            new_fingerprint=fingerprint,
        )

    # ------------------------------------------------------------------ training and evaluation

    def loss(self, model, batch: dict) -> torch.Tensor:
        """Mean cross-entropy per completion token (prompt tokens carry label -100), packed if the recipe asks."""
        packing = self.max_length if self.options.packing else None
        return prompting.completion_loss(model, batch, packing, self.tokenizer.pad_token_id)

    def eval_step(self, model, batch: dict) -> dict[str, torch.Tensor]:
        """Per example: the gold completion's summed NLL and token count, and the generated tokens."""
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=prompting.position_ids(batch["attention_mask"]),
            use_cache=False,
        ).logits
        nll, count = prompting.token_losses(logits, prompting.completion_labels(batch))
        mask = batch["attention_mask"].bool()
        prompts = [batch["input_ids"][i][mask[i]][: int(batch["prompt_length"][i])].tolist() for i in range(len(mask))]
        generated = prompting.generate(
            model, prompts, self.tokenizer, self.options.max_new_tokens, self.options.num_beams
        )
        return {"index": batch["index"], "nll": nll, "tokens": count, "generated": generated}

    def new_accumulator(self, metric_names: tuple[str, ...]) -> PromptCompletionAccumulator:
        return PromptCompletionAccumulator(self, metric_names)

    def predict(self, model, tokenizer, rows: list[dict], max_length: int, batch_size: int = 16) -> list[dict]:
        """The generated completion for each row (a dict with the template's columns)."""
        chat = self.options.chat_template
        model.eval()
        results = []
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                prompts = [
                    prompting.encode_example(
                        tokenizer,
                        prompting.render_prompt(self.template, row, tokenizer, chat)[0],
                        None,
                        max_length,
                        chat,
                        self.options.max_new_tokens,
                    )["input_ids"]
                    for row in chunk
                ]
                texts = prompting.decode(
                    tokenizer,
                    prompting.generate(model, prompts, tokenizer, self.options.max_new_tokens, self.options.num_beams),
                )
                results += [{**row, self.prediction_key: text} for row, text in zip(chunk, texts)]
        return results

    def examples(self) -> dict[str, str]:
        """The model card's example values of the task's columns."""
        return {}

    def usage_code(self, model: PushedModel, max_length: int) -> str:
        """The recipe's prompt, filled with example values, continued with plain transformers / peft."""
        row = example_row(prompting.prompt_columns(self.template), self.examples())
        generation = {"max_new_tokens": self.options.max_new_tokens, "num_beams": self.options.num_beams}
        return causal_lm_usage(model, self.template, self.options.chat_template, row, generation)


class PromptCompletionAccumulator(CollectedOutputs):
    """Streams per-example NLL sums, token counts and generated tokens; decodes and scores at the end."""

    def result(self, dataset: datasets.Dataset, features: datasets.Dataset | None = None) -> tuple[dict, list[dict]]:
        columns = self.columns()
        order = columns["index"].argsort()
        columns = {key: value[order] for key, value in columns.items()}
        texts = prompting.decode(self.task.tokenizer, columns["generated"])
        metrics: dict[str, float] = {"num_examples": len(texts)}
        tokens = int(columns["tokens"].sum())
        if tokens:  # the split has targets
            metrics.update(self.task.score(texts, dataset))
            metrics = {
                key: value for key, value in metrics.items() if key == "num_examples" or key in self.metric_names
            }
            # Per target token, natural log: comparable across tokenizers of one family, and with classification's per-example CE.
            cross_entropy = float(columns["nll"].double().sum()) / tokens
            if "cross_entropy" in self.metric_names:
                metrics["cross_entropy"] = cross_entropy
            if "perplexity" in self.metric_names:
                metrics["perplexity"] = math.exp(min(cross_entropy, 700.0))
            metrics["num_target_tokens"] = tokens
        rows = [
            self.task.prediction_row(dataset[index], index, text)
            for index, text in zip(columns["index"].tolist(), texts)
        ]
        return metrics, rows
