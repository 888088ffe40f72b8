"""The task registry: every task the recipe schema, the CLI, evaluation, reports and the hub know.

A new task is one module here (its options and its `Task` subclass; the contract is `base.py`) and one
entry in TASKS.
"""

from __future__ import annotations

from ..common.errors import UserError
from .base import Task, TaskOptions
from .classification import Classification
from .multi_label import MultiLabelClassification
from .question_answering import QuestionAnswering
from .regression import Regression
from .seq2seq import Summarization, Translation
from .token_classification import TokenClassification

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        Classification,
        QuestionAnswering,
        Summarization,
        Translation,
        TokenClassification,
        MultiLabelClassification,
        Regression,
    )
}


def create(options: TaskOptions) -> Task:
    """The task object for the recipe's `task` section."""
    return TASKS[options.type].create(options)


def from_model_config(options: TaskOptions, config) -> TaskOptions:
    """The options completed from a checkpoint's config (what the task leaves to the model, e.g. label names)."""
    return TASKS[options.type].from_model_config(options, config)


def option_classes() -> tuple[type[TaskOptions], ...]:
    """Every task's recipe section, in registry order: the recipe's `task` union."""
    return tuple(task.options_class for task in TASKS.values())


def predict_fields() -> dict[str, str]:
    """Every `llmtune predict` input field any task declares, with its help (the first declaration wins)."""
    fields: dict[str, str] = {}
    for task in TASKS.values():
        for name, help_text in task.predict_fields.items():
            fields.setdefault(name, help_text)
    return fields


def file_readers() -> dict:
    """Every task's own file readers by suffix (`Task.file_readers`; the first declaration wins): for inputs read
    before a run's task is known, such as `llmtune predict --input`."""
    readers: dict = {}
    for task in TASKS.values():
        for suffix, reader in task.file_readers.items():
            readers.setdefault(suffix, reader)
    return readers


def for_architectures(architectures: list[str] | None, where: str) -> str:
    """The task type of a bare checkpoint, read off its config's architectures (e.g. BertForSequenceClassification).

    Raises:
        UserError: no task, or several, make models of that architecture; `--set task.type=TYPE` decides.
    """
    names = architectures or []
    found = [
        name for name, task in TASKS.items() if any(a.endswith(suffix) for a in names for suffix in task.architectures)
    ]
    if len(found) == 1:
        return found[0]
    shown = ", ".join(names) or "none listed"
    raise UserError(
        f"{where}: cannot tell which task this checkpoint was trained for (architectures: {shown}); "
        f"pass --set task.type=TYPE with one of {', '.join(TASKS)}"
    )
