"""Each table's columns, read from its current Avro schema: the one definition of a record's fields.

The Avro type gives the column's type; a field names the SQL type only where
Avro cannot say it, with attributes that Avro ignores (they are not part of
the schema's parsing canonical form, so they change no fingerprint):

- ``"sqlType": "varchar(N)"`` or ``"jsonb"`` on a string (default: ``text``);
- ``"itemSqlType": "varchar(N)"`` on an array of strings (default: ``text``);
- ``"minimum"`` / ``"maximum"`` on a number (a range the table's CHECK or the
  simulation's meaning imposes, e.g. a step is never negative).

From these the validation models (``producers.models``) and the worker's
table specs (``consumers.table_specs``) are derived; ``tests/test_contracts.py``
proves the migrated tables agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from producers import tables
from producers.codec import default_schema_dir, load_schema_versions

_VARCHAR = re.compile(r"varchar\((\d+)\)")

#: Avro type -> (SQL type in the table, type it is copied as).
_BY_AVRO: Final = {
    "uuid": "uuid",
    "string": "text",
    "int": "integer",
    "float": "real",
    "double": "real",
    "timestamp-micros": "timestamptz",
    "array<string>": "text[]",
}
#: PostgreSQL type names psycopg's binary COPY knows each SQL type by.
COPY_TYPE: Final = {
    "uuid": "uuid", "text": "text", "integer": "int4", "real": "float4", "timestamptz": "timestamptz",
    "text[]": "text[]", "jsonb": "text", "varchar": "text",
}


@dataclass(frozen=True, slots=True)
class ColumnDef:
    """One field of a table's current schema, as a column."""

    name: str
    #: Avro type: uuid, string, int, float, double, timestamp-micros, array<string>.
    avro: str
    #: SQL type as the migrations declare it: varchar(255), text, jsonb, integer, real, ...
    sql: str
    nullable: bool
    #: VARCHAR length (of the items, for an array), or None for unbounded text.
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def base_sql(self) -> str:
        """The SQL type without a length: varchar(255) -> varchar."""
        return _VARCHAR.sub("varchar", self.sql)


def avro_kind(t: Any) -> tuple[str, bool]:
    """(kind, nullable) of an Avro field type: uuid, string, int, ..., array<string>."""
    if isinstance(t, list):
        branches = [b for b in t if b != "null"]
        if len(branches) != 1:
            raise ValueError(f"unions other than [null, T] are not part of the contract: {t}")
        return avro_kind(branches[0])[0], "null" in t
    if isinstance(t, dict):
        if "logicalType" in t:
            return t["logicalType"], False
        if t["type"] == "array":
            return f"array<{avro_kind(t['items'])[0]}>", False
        return avro_kind(t["type"])
    return t, False


def column_of(field: dict[str, Any]) -> ColumnDef:
    """The column of one Avro field (see the module doc for the attributes read)."""
    avro, nullable = avro_kind(field["type"])
    if avro not in _BY_AVRO:
        raise ValueError(f"field {field['name']!r}: Avro type {avro} has no column type")
    sql = field.get("sqlType") or _BY_AVRO[avro]
    item_sql = field.get("itemSqlType")
    length = _VARCHAR.fullmatch(item_sql or sql)
    return ColumnDef(
        name=field["name"],
        avro=avro,
        sql=sql,
        nullable=nullable,
        max_length=int(length.group(1)) if length else None,
        minimum=field.get("minimum"),
        maximum=field.get("maximum"),
    )


def load_columns() -> dict[str, tuple[ColumnDef, ...]]:
    """Columns of every table, in the field order of its current schema."""
    versions = load_schema_versions(default_schema_dir())
    return {t: tuple(column_of(f) for f in versions[t][-1].raw["fields"]) for t in tables.TABLES}


#: Every table's columns (current schema versions).
COLUMNS: Final[dict[str, tuple[ColumnDef, ...]]] = load_columns()
