"""What the model card's usage snippets share: loading the pushed model with plain transformers / peft, and
prompting a causal language model the way llmtune does.

A snippet must run as written (tests execute them against a local folder), so values are written as Python
literals and the generation settings are the recipe's own: the snippet then prints what `llmtune predict` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import prompting


def literal(value) -> str:
    """A Python literal for a number, a flag, a string or a mapping of strings
    (JSON writes those as Python does, in double quotes)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (str, dict)) else repr(value)


def keywords(settings: dict) -> str:
    return ", ".join(f"{name}={literal(value)}" for name, value in settings.items())


@dataclass(frozen=True)
class PushedModel:
    """Where the card's reader loads the model from: the repo, and for an adapter the base model it goes on."""

    repo_id: str
    base: str
    adapter: bool
    revision: str | None = None  # the branch pushed to
    base_revision: str | None = None

    def source(self) -> str:
        """from_pretrained's arguments for the pushed repo."""
        branch = f", revision={literal(self.revision)}" if self.revision and self.revision != "main" else ""
        return literal(self.repo_id) + branch

    def imports(self, auto_class: str) -> str:
        return (
            "from peft import PeftModel\n" if self.adapter else ""
        ) + f"from transformers import {auto_class}, AutoTokenizer\n"

    def load(self, auto_class: str, base_arguments: str = "") -> str:
        """Lines that leave `model` (in eval mode) and `tokenizer`;
        `base_arguments` go to the base model of an adapter."""
        if self.adapter:
            if self.base_revision:
                base_arguments = f", revision={literal(self.base_revision)}" + base_arguments
            model = (
                f"base = {auto_class}.from_pretrained({literal(self.base)}{base_arguments})\n"
                f"model = PeftModel.from_pretrained(base, {self.source()}).eval()\n"
            )
        else:
            model = f"model = {auto_class}.from_pretrained({self.source()}).eval()\n"
        return model + f"tokenizer = AutoTokenizer.from_pretrained({self.source()})\n"


def causal_lm_usage(model: PushedModel, template: str, chat: bool, row: dict, generation: dict) -> str:
    """A causal LM's snippet: the recipe's prompt template (through the chat template if the recipe used it),
    generation with the recipe's settings, and only the new tokens decoded."""
    before_slot = template[: template.rindex("{" + prompting.COMPLETION + "}")]
    if chat:
        prompt = (
            f"prompt = {literal(before_slot)}.format(**row)\n"
            'prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt.strip()}], '
            "add_generation_prompt=True, tokenize=False)\n"
        )
    else:
        prompt = (
            f'prompt = {literal(before_slot)}.format(**row).rstrip(" ")'
            "  # the space before the completion is the model's to write\n"
        )
    settings = {**generation, "do_sample": False}
    return (
        model.imports("AutoModelForCausalLM")
        + "\n"
        + model.load("AutoModelForCausalLM")
        + f"row = {literal(row)}\n"
        + prompt
        # a chat template writes its own special tokens
        + f'inputs = tokenizer(prompt, return_tensors="pt"{", add_special_tokens=False" if chat else ""})\n'
        + f"output = model.generate(**inputs, {keywords(settings)},\n"
        + "                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)\n"
        + 'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())\n'
    )


def example_row(columns: list[str], examples: dict[str, str]) -> dict[str, str]:
    """Example values for a prompt's columns: the task's examples, a placeholder for any other column."""
    return {column: examples.get(column, f"<{column}>") for column in columns}
