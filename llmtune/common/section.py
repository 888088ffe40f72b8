"""The strict base of every recipe section: unknown keys, infinities and YAML's true/false given for numbers
are refused at the key."""

from __future__ import annotations

import typing

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    # Unknown keys are errors; so are infinities and NaN (`learning_rate: .inf`), which no setting means.
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, data):
        """YAML's true/false are not numbers here (pydantic would read `batch_size: true` as 1): they reach the number
        fields as the words they are, which fail there, at the key, as any other word would."""
        if isinstance(data, dict):
            fields = cls.model_fields
            flags = {
                name: str(value).lower()
                for name, value in data.items()
                if isinstance(value, bool) and name in fields and _is_number(fields[name].annotation)
            }
            data = {**data, **flags} if flags else data
        return data


def _is_number(annotation) -> bool:
    """Whether a field holds an int or a float (also when optional)."""
    return annotation in (int, float) or any(arg in (int, float) for arg in typing.get_args(annotation))
