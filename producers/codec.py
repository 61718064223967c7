"""Avro single-object encoding with the schema versions kept in ``schemas/``.

A message is ``C3 01`` + the writer schema's CRC-64-AVRO fingerprint (8 bytes,
little-endian) + the Avro binary payload. Decoding looks the fingerprint up
among every version of every table and resolves the payload to that table's
current (newest) schema, so records written by older versions still load.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from producers._fast_avro import UnsupportedSchema, record_codec, uuid_of_text
from producers.errors import MalformedRecordError, UnknownSchemaError
from producers.tables import TABLES

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10

def schema_fingerprint(schema: dict[str, Any]) -> bytes:
    """The 8 little-endian bytes that identify `schema` in single-object encoding (CRC-64-AVRO)."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def default_schema_dir() -> Path:
    """Where the schemas live: inside the installed wheel, else the source tree."""
    packaged = resources.files("producers").joinpath("_schemas")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "schemas"


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One parsed version of a table's schema."""

    table: str
    version: int
    raw: dict[str, Any]
    parsed: Any
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded message: its table, writer version and record (reader-schema shape)."""

    table: str
    version: int
    record: dict[str, Any]


def load_schema_versions(schema_dir: Path) -> dict[str, list[SchemaVersion]]:
    """Read ``<table>/v<N>.avsc`` for every table, oldest version first."""
    versions: dict[str, list[SchemaVersion]] = {}
    for table in TABLES:
        found = []
        for path in sorted((schema_dir / table).glob("v*.avsc")):
            number = int(path.stem[1:])
            raw = json.loads(path.read_text(encoding="utf-8"))
            parsed = fastavro.parse_schema(raw)
            found.append(SchemaVersion(table, number, raw, parsed, schema_fingerprint(raw)))
        if not found:
            raise FileNotFoundError(f"no schema versions for table {table!r} in {schema_dir}")
        versions[table] = sorted(found, key=lambda v: v.version)
    return versions


def _is_uuid(t: Any) -> bool:
    if isinstance(t, list):
        return any(_is_uuid(b) for b in t)
    return isinstance(t, dict) and t.get("logicalType") == "uuid"


def _uuids_as_text(schema: Any) -> Any:
    """`schema` (raw JSON) with every uuid logical type a plain string."""
    if isinstance(schema, dict):
        if schema.get("logicalType") == "uuid":
            return "string"
        return {k: _uuids_as_text(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_uuids_as_text(s) for s in schema]
    return schema


class AvroCodec:
    """Encode records with each table's current schema; decode any known version."""

    def __init__(self, schema_dir: Path | None = None) -> None:
        self.versions = load_schema_versions(schema_dir or default_schema_dir())
        self.current = {table: vs[-1] for table, vs in self.versions.items()}
        # Specialized codecs for the current versions (the hot paths); fastavro resolves older ones.
        self._fast: dict[str, tuple[Any, Any]] = {}
        for table, schema in self.current.items():
            try:
                self._fast[table] = record_codec(schema.raw)
            except UnsupportedSchema:
                pass
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for vs in self.versions.values():
            for v in vs:
                if v.fingerprint in self._by_fingerprint:
                    raise ValueError(f"two schema versions share fingerprint: {v.table} v{v.version}")
                self._by_fingerprint[v.fingerprint] = v
        # fastavro reads a uuid as uuid.UUID(text), which takes and reinterprets garbage (" " and 31 hex
        # digits...): older versions are read with their uuids as text, checked by uuid_of_text after.
        self._text_uuids = {v.fingerprint: fastavro.parse_schema(_uuids_as_text(v.raw))
                            for vs in self.versions.values() for v in vs}
        # fastavro also reads a varint longer than 64 bits modulo 2**64 (2**64 + 7 as 7): an older
        # version's payload is first read by the project's own reader (which refuses that), when it can.
        self._checks: dict[bytes, Any] = {}
        for vs in self.versions.values():
            for v in vs[:-1]:
                try:
                    self._checks[v.fingerprint] = record_codec(v.raw)[1]
                except UnsupportedSchema:
                    pass
        self._uuid_fields = {t: tuple(f["name"] for f in v.raw["fields"] if _is_uuid(f["type"]))
                             for t, v in self.current.items()}

    def encode(self, table: str, record: dict[str, Any], version: int | None = None) -> bytes:
        """Serialize `record` with the table's current schema (or an explicit `version`)."""
        schema = self.current[table] if version is None else self._version(table, version)
        fast = self._fast.get(table) if schema is self.current[table] else None
        if fast is not None:
            return MAGIC + schema.fingerprint + fast[0](record)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def decode(self, data: bytes) -> Decoded:
        """Parse single-object bytes; raise a CodecError subclass on bad input."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            raise MalformedRecordError("not Avro single-object encoding (bad marker or too short)")
        writer = self._by_fingerprint.get(data[2:HEADER_SIZE])
        if writer is None:
            raise UnknownSchemaError(
                f"unknown schema fingerprint {data[2:HEADER_SIZE].hex()}: this worker lacks that schema "
                f"version (deploy the newest schemas/)"
            )
        reader = self.current[writer.table]
        fast = self._fast.get(writer.table) if reader is writer else None
        if fast is not None:
            try:
                record, end = fast[1](data, HEADER_SIZE)
            except Exception as e:  # IndexError, struct.error, UnicodeDecodeError, ValueError...
                raise MalformedRecordError(f"corrupt {writer.table} v{writer.version} payload: {e!r}") from e
            if end != len(data):
                raise MalformedRecordError(f"{len(data) - end} trailing bytes after the {writer.table} payload")
            return Decoded(writer.table, writer.version, record)
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        check = self._checks.get(writer.fingerprint)
        try:
            if check is not None:
                check(data, HEADER_SIZE)  # ValueError("varint longer than 64 bits"), as the current version's
            record = fastavro.schemaless_reader(
                buf, self._text_uuids[writer.fingerprint],
                None if reader is writer else self._text_uuids[reader.fingerprint],
            )
            for name in self._uuid_fields[writer.table]:
                if isinstance(record.get(name), str):
                    record[name] = uuid_of_text(record[name])
        except Exception as e:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise MalformedRecordError(f"corrupt {writer.table} v{writer.version} payload: {e!r}") from e
        if buf.tell() != len(data):
            raise MalformedRecordError(
                f"{len(data) - buf.tell()} trailing bytes after the {writer.table} payload"
            )
        return Decoded(writer.table, writer.version, record)

    def _version(self, table: str, version: int) -> SchemaVersion:
        for v in self.versions[table]:
            if v.version == version:
                return v
        raise KeyError(f"{table} has no schema version {version}")
