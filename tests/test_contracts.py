"""The contracts between the sides agree: DDL columns, Avro schemas, table specs, models.

The DDL side is read from the migrated template database (information_schema),
not parsed from the .sql files, so what is checked is what PostgreSQL built.

Adding a column to the DDL only fails ``test_every_column_has_an_avro_field``
(and, for a VARCHAR, ``test_varchar_lengths_match_the_models``); adding a field
to a new schema version only fails ``test_every_avro_field_has_a_column``,
``test_table_specs_load_the_avro_fields_in_order`` and
``test_models_have_the_avro_fields``.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
import psycopg
import pytest
from pydantic.fields import FieldInfo

from consumers.table_specs import SPECS
from producers import tables
from producers.codec import AvroCodec
from producers.columns import COLUMNS, avro_kind
from producers.models import MAX_TEXT_CHARS, MODELS

CODEC = AvroCodec()

#: Columns PostgreSQL fills itself (BIGSERIAL keys); no Avro field carries them.
SERVER_GENERATED = {
    (tables.MARKET_TRANSACTIONS, "transaction_id_pk"),
    (tables.BANKING_TRANSACTIONS, "transaction_id_pk"),
    (tables.SIMULATION_EVENTS, "event_id"),
}
#: When a row was loaded (ddl/0009): filled by the column's DEFAULT now(), no Avro field carries it.
LOAD_TIMES = {(t, "loaded_at") for t in (tables.AGENT_MEMORIES, tables.MARKET_TRANSACTIONS,
                                         tables.BANKING_TRANSACTIONS, tables.SIMULATION_EVENTS)}
#: Columns PostgreSQL computes from others (GENERATED ALWAYS ... STORED); loaders never write them.
COMPUTED = {(tables.AGENT_MEMORIES, "search_vector")}
#: Avro strings documented as JSON text, loaded into JSONB columns.
JSON_TEXT_FIELDS = {(t, c.name) for t, cols in COLUMNS.items() for c in cols if c.sql == "jsonb"}
#: Non-null in Avro but nullable in the DDL, on purpose: ddl/0001 documents
#: "NULL marks a stub row created because a child row arrived before its run".
NULLABLE_FOR_STUBS = {(tables.SIMULATION_RUNS, "updated_at"), (tables.AGENTS, "updated_at")}


@dataclass(frozen=True)
class DbColumn:
    table: str
    name: str
    position: int
    data_type: str
    udt_name: str
    nullable: bool
    default: str | None
    max_length: int | None


@dataclass(frozen=True)
class AvroField:
    table: str
    name: str
    kind: str  # uuid, string, int, float, timestamp-micros, array<string>, ...
    nullable: bool
    doc: str


def avro_fields(table: str) -> list[AvroField]:
    out = []
    for f in CODEC.current[table].raw["fields"]:
        kind, nullable = avro_kind(f["type"])
        out.append(AvroField(table, f["name"], kind, nullable, f.get("doc", "")))
    return out


#: Avro kind -> accepted (information_schema data_type, udt_name) pairs; None = any udt.
COMPATIBLE: dict[str, set[tuple[str, str | None]]] = {
    "uuid": {("uuid", "uuid")},
    "string": {("character varying", "varchar"), ("text", "text")},
    "int": {("integer", "int4")},
    "float": {("real", "float4")},
    "timestamp-micros": {("timestamp with time zone", "timestamptz")},
    "array<string>": {("ARRAY", "_text")},
}


def compatible(field: AvroField, column: DbColumn) -> bool:
    if (field.table, field.name) in JSON_TEXT_FIELDS:
        return field.kind == "string" and (column.data_type, column.udt_name) == ("jsonb", "jsonb")
    return (column.data_type, column.udt_name) in COMPATIBLE.get(field.kind, set())


@pytest.fixture(scope="module")
def db_columns(services: Any, template_db: str) -> dict[str, dict[str, DbColumn]]:
    """Columns of the six tables in the migrated template (connection closed before tests run)."""
    from support.db import _with_db

    with psycopg.connect(_with_db(services.database_url, template_db), autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT table_name, column_name, ordinal_position, data_type, udt_name,
                   is_nullable = 'YES', column_default, character_maximum_length
            FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = ANY(%s)
            ORDER BY table_name, ordinal_position
            """,
            (list(tables.TABLES),),
        ).fetchall()
    found: dict[str, dict[str, DbColumn]] = {t: {} for t in tables.TABLES}
    for row in rows:
        found[row[0]][row[1]] = DbColumn(*row)
    return found


# --- DDL <-> Avro (real database) ---------------------------------------------------------


@pytest.mark.integration
def test_all_six_tables_exist(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    assert [t for t in tables.TABLES if not db_columns[t]] == []


@pytest.mark.integration
def test_every_column_has_an_avro_field(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    missing = [
        f"{t}.{c}"
        for t in tables.TABLES
        for c in db_columns[t]
        if (t, c) not in SERVER_GENERATED | COMPUTED | LOAD_TIMES and c not in {f.name for f in avro_fields(t)}
    ]
    assert missing == [], "DDL columns no Avro schema carries"


@pytest.mark.integration
def test_server_generated_columns_are_generated(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    for table, name in sorted(SERVER_GENERATED):
        column = db_columns[table][name]
        assert not column.nullable and (column.default or "").startswith("nextval("), column


@pytest.mark.integration
def test_load_times_default_to_the_loading_transactions_start(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    for table, name in sorted(LOAD_TIMES):
        column = db_columns[table][name]
        assert column.nullable and column.default == "now()" and column.data_type == "timestamp with time zone", column


@pytest.mark.integration
def test_computed_columns_are_generated_always(services: Any, template_db: str) -> None:
    from support.db import _with_db

    with psycopg.connect(_with_db(services.database_url, template_db), autocommit=True) as conn:
        generated = set(conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND is_generated = 'ALWAYS'"
        ).fetchall())
    assert generated == COMPUTED


@pytest.mark.integration
def test_every_avro_field_has_a_column(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    missing = [f"{t}.{f.name}" for t in tables.TABLES for f in avro_fields(t) if f.name not in db_columns[t]]
    assert missing == [], "Avro fields with no DDL column"


@pytest.mark.integration
def test_avro_types_are_compatible_with_column_types(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    wrong = [
        f"{t}.{f.name}: avro {f.kind} vs {c.data_type}/{c.udt_name}"
        for t in tables.TABLES
        for f in avro_fields(t)
        if (c := db_columns[t].get(f.name)) is not None and not compatible(f, c)
    ]
    assert wrong == []


@pytest.mark.integration
def test_jsonb_columns_are_exactly_the_documented_json_text_fields(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    jsonb = {(t, c.name) for t in tables.TABLES for c in db_columns[t].values() if c.data_type == "jsonb"}
    assert jsonb == JSON_TEXT_FIELDS
    for table, name in JSON_TEXT_FIELDS:
        doc = next(f.doc for f in avro_fields(table) if f.name == name)
        assert "JSON" in doc, f"{table}.{name} must be documented as JSON text in its schema"


@pytest.mark.integration
def test_nullable_avro_fields_have_nullable_columns(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    # Stricter than "nullable or has a default": the loader COPYs an explicit
    # NULL, and an explicit NULL is not replaced by a column DEFAULT, so a
    # NOT NULL column would refuse it whatever its default.
    wrong = [
        f"{t}.{f.name}"
        for t in tables.TABLES
        for f in avro_fields(t)
        if f.nullable and (c := db_columns[t].get(f.name)) is not None and not c.nullable
    ]
    assert wrong == []


@pytest.mark.integration
def test_non_null_avro_fields_have_not_null_columns_except_stub_markers(
    db_columns: dict[str, dict[str, DbColumn]],
) -> None:
    mismatches = {
        (t, f.name)
        for t in tables.TABLES
        for f in avro_fields(t)
        if not f.nullable and (c := db_columns[t].get(f.name)) is not None and c.nullable
    }
    # Exactly the documented exceptions: a new mismatch fails, and so does an
    # exception that no longer holds (keep the list honest).
    assert mismatches == NULLABLE_FOR_STUBS


# --- lengths: DDL <-> models (real database) ----------------------------------------------


def model_max_length(info: FieldInfo) -> int | None:
    """The max_length of a top-level string field, through Optional/Annotated (not list items)."""
    found: list[int] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, annotated_types.MaxLen):
            found.append(obj.max_length)
        elif isinstance(obj, FieldInfo):
            for m in obj.metadata:
                walk(m)
        elif get_origin(obj) is Annotated:
            walk(get_args(obj)[0])
            for m in obj.__metadata__:
                walk(m)
        elif get_origin(obj) in (Union, types.UnionType):
            for arg in get_args(obj):
                walk(arg)

    walk(info)
    walk(info.annotation)
    assert len(set(found)) <= 1, found
    return found[0] if found else None


def test_model_max_length_helper_reads_optional_and_required_fields() -> None:
    fields = MODELS[tables.AGENT_MEMORIES].model_fields
    assert model_max_length(fields["agent_id_str"]) == 255
    assert model_max_length(fields["related_agent_id"]) == 255
    assert model_max_length(fields["content"]) == MAX_TEXT_CHARS
    assert model_max_length(fields["tags"]) is None  # item length, not a column length
    assert model_max_length(fields["step_timestamp"]) is None


@pytest.mark.integration
def test_varchar_lengths_match_the_models(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    wrong = []
    for t in tables.TABLES:
        fields = MODELS[t].model_fields
        for c in db_columns[t].values():
            if c.data_type != "character varying":
                continue
            model = model_max_length(fields[c.name]) if c.name in fields else "no model field"
            if model != c.max_length:
                wrong.append(f"{t}.{c.name}: VARCHAR({c.max_length}) vs model max_length {model}")
    assert wrong == []


@pytest.mark.integration
def test_short_model_strings_are_varchar_columns_of_that_length(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    wrong = []
    for t in tables.TABLES:
        for name, info in MODELS[t].model_fields.items():
            n = model_max_length(info)
            if n is None or n >= MAX_TEXT_CHARS:
                continue
            c = db_columns[t].get(name)
            if c is None or (c.data_type, c.max_length) != ("character varying", n):
                wrong.append(f"{t}.{name}: model max_length {n} vs {c and (c.data_type, c.max_length)}")
    assert wrong == []


# --- specs and models <-> Avro (no services needed) ---------------------------------------


@pytest.mark.parametrize("table", tables.TABLES)
def test_table_specs_load_the_avro_fields_in_order(table: str) -> None:
    assert SPECS[table].column_names == tuple(f.name for f in avro_fields(table))


#: Avro kind -> the staging (COPY) type a spec may use for it.
SPEC_TYPES = {"uuid": {"uuid"}, "string": {"text"}, "int": {"int4"}, "float": {"float4"},
              "timestamp-micros": {"timestamptz"}, "array<string>": {"text[]"}}


@pytest.mark.parametrize("table", tables.TABLES)
def test_table_spec_copy_types_fit_the_avro_types(table: str) -> None:
    kinds = {f.name: f.kind for f in avro_fields(table)}
    wrong = [f"{c.name}: {c.copy_type} for {kinds[c.name]}" for c in SPECS[table].columns
             if c.copy_type not in SPEC_TYPES[kinds[c.name]]]
    assert wrong == []


@pytest.mark.integration
def test_table_spec_table_types_are_the_column_types(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    udt = {"text": {"text", "varchar"}, "uuid": {"uuid"}, "int4": {"int4"}, "float4": {"float4"},
           "timestamptz": {"timestamptz"}, "jsonb": {"jsonb"}, "text[]": {"_text"}}
    wrong = [
        f"{t}.{c.name}: spec {c.table_type} vs {db_columns[t][c.name].udt_name}"
        for t in tables.TABLES
        for c in SPECS[t].columns
        if c.name in db_columns[t] and db_columns[t][c.name].udt_name not in udt.get(c.table_type, set())
    ]
    assert wrong == []


@pytest.mark.integration
def test_spec_keys_are_unique_in_the_database(services: Any, template_db: str) -> None:
    # ON CONFLICT (key) needs a unique index or constraint on exactly those columns.
    from support.db import _with_db

    with psycopg.connect(_with_db(services.database_url, template_db), autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT c.relname, array_agg(a.attname ORDER BY a.attname)
            FROM pg_index i
            JOIN pg_class c ON c.oid = i.indrelid
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indisunique AND c.relname = ANY(%s)
            GROUP BY c.relname, i.indexrelid
            """,
            (list(tables.TABLES),),
        ).fetchall()
    unique = {(t, tuple(cols)) for t, cols in rows}
    missing = [t for t in tables.TABLES if (t, tuple(sorted(SPECS[t].key))) not in unique]
    assert missing == []


@pytest.mark.parametrize("table", tables.TABLES)
def test_models_have_the_avro_fields(table: str) -> None:
    assert set(MODELS[table].model_fields) == {f.name for f in avro_fields(table)}


@pytest.mark.parametrize("table", tables.TABLES)
def test_model_optionality_matches_avro_nullability(table: str) -> None:
    fields = MODELS[table].model_fields
    wrong = [f.name for f in avro_fields(table) if fields[f.name].is_required() == f.nullable]
    assert wrong == []


# --- schema attributes and declarations <-> DDL (real database) ------------------------------


@pytest.mark.integration
def test_declared_sql_types_are_the_column_types(db_columns: dict[str, dict[str, DbColumn]]) -> None:
    # The one definition: each schema field's column (producers.columns) is what the migrations built.
    by_sql = {
        "uuid": ("uuid", "uuid"), "text": ("text", "text"), "varchar": ("character varying", "varchar"),
        "jsonb": ("jsonb", "jsonb"), "integer": ("integer", "int4"), "real": ("real", "float4"),
        "timestamptz": ("timestamp with time zone", "timestamptz"), "text[]": ("ARRAY", "_text"),
    }
    wrong = []
    for table in tables.TABLES:
        for c in COLUMNS[table]:
            db = db_columns[table][c.name]
            length = c.max_length if c.base_sql == "varchar" else None
            if (db.data_type, db.udt_name) != by_sql[c.base_sql] or db.max_length != length:
                wrong.append((table, c.name, c.sql, db.data_type, db.max_length))
    assert wrong == []


@pytest.mark.integration
def test_declarations_reference_what_the_tables_reference(services: Any, template_db: str) -> None:
    # run_column -> simulation_runs(run_id); agent_column -> agents(creation_run_id, agent_id_str).
    from support.db import _with_db

    with psycopg.connect(_with_db(services.database_url, template_db), autocommit=True) as conn:
        rows = conn.execute(
            """
            SELECT c.conrelid::regclass::text, c.confrelid::regclass::text,
                   array(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                         JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.n ORDER BY k.i)
            FROM pg_constraint c WHERE c.contype = 'f'
            """
        ).fetchall()
    foreign = {(t, parent, tuple(cols)) for t, parent, cols in rows}
    expected = set()
    for name, decl in tables.DECLARATIONS.items():
        if name != tables.SIMULATION_RUNS:
            expected.add((name, tables.SIMULATION_RUNS, (decl.run_column,)))
        if decl.agent_column:
            expected.add((name, tables.AGENTS, (decl.run_column, decl.agent_column)))
    assert foreign == expected


@pytest.mark.parametrize("table", tables.TABLES)
def test_declared_columns_exist(table: str) -> None:
    decl = tables.DECLARATIONS[table]
    names = {c.name for c in COLUMNS[table]}
    declared = {*decl.key, decl.run_column, *decl.event_time, decl.partition_by, decl.agent_column} - {None}
    assert declared <= names
