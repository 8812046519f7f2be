"""The base of every settings section: validated by pydantic, frozen once made, and hashable."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# A number in YAML: an int or a float, never a bool or a string (``true`` is not a guidance scale).
Number = Annotated[float, Field(strict=True)]


class Frozen(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )
