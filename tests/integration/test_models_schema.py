"""Job, JobStage and JobCost match their tables (names, nullability, types), read from information_schema."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

import pytest
from pydantic import AwareDatetime, BaseModel

from shared.database import DatabaseClient
from shared.models import Job, JobCost, JobStage

# The Python type each PostgreSQL type arrives as through asyncpg (json/jsonb decoded by the client).
PG_TO_PYTHON: dict[str, type] = {
    "uuid": UUID,
    "text": str,
    "integer": int,
    "smallint": int,
    "numeric": Decimal,
    "timestamp with time zone": datetime,
    "jsonb": dict,
}


def python_type(annotation: Any) -> tuple[type, bool]:
    """Return the model field's base type and whether it admits None."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return python_type(args[0])
    if origin in {typing.Union, types.UnionType}:
        inner = [arg for arg in args if arg is not type(None)]
        base, _ = python_type(inner[0])
        return base, len(inner) < len(args)
    if origin is dict:
        return dict, False
    if annotation is AwareDatetime:
        return datetime, False
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return str, False  # StrEnum columns are text with a check constraint
    return annotation, False


@pytest.mark.parametrize(("model", "table"), [(Job, "jobs"), (JobStage, "job_stages"), (JobCost, "job_costs")])
async def test_model_matches_its_table(db: DatabaseClient, model: type[BaseModel], table: str) -> None:
    columns = await db.fetch(
        """
        select column_name, is_nullable = 'YES' as nullable, data_type, numeric_precision, numeric_scale
          from information_schema.columns
         where table_schema = 'public' and table_name = $1
        """,
        table,
    )
    by_name = {column["column_name"]: column for column in columns}
    assert set(by_name) == set(model.model_fields)
    for name, field in model.model_fields.items():
        column = by_name[name]
        base, optional = python_type(field.annotation)
        assert PG_TO_PYTHON[column["data_type"]] is base, name
        assert column["nullable"] == optional, name
        if base is Decimal:
            assert (12, 4) == (column["numeric_precision"], column["numeric_scale"]), name
