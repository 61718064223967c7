"""Deterministic client-side ids: re-running a step re-sends the same ids."""

from __future__ import annotations

import hashlib
import uuid
from typing import Final

#: Namespace of every UUIDv5 society-ingest derives (fixed forever).
NAMESPACE: Final = uuid.UUID("6f1c2a52-3d0b-5b7e-9a43-5d1f0c2b7e11")


def memory_id(run_id: uuid.UUID | str, agent_id: str, step: int, seq: int) -> uuid.UUID:
    """Id of the `seq`-th memory `agent_id` recorded at `step` of `run_id`."""
    return uuid.uuid5(NAMESPACE, f"memory/{run_id}/{agent_id}/{step}/{seq}")


def event_uid(run_id: uuid.UUID | str, step: int, subject: str, seq: int) -> uuid.UUID:
    """Id of the `seq`-th event about `subject` at `step` of `run_id`."""
    return uuid.uuid5(NAMESPACE, f"event/{run_id}/{subject}/{step}/{seq}")


#: UUID version 5 and RFC 4122 variant bits, set over the first 16 bytes of a SHA-1 digest (as uuid5 does).
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_SET = (5 << 76) | (0x8000 << 48)


_new = object.__new__
_set = object.__setattr__
_UUID = uuid.UUID
_UNKNOWN = uuid.SafeUUID.unknown


def _uuid_of_int(n: int) -> uuid.UUID:
    """A UUID from its 128-bit value, without UUID.__init__'s argument parsing (what it stores)."""
    u = _new(_UUID)
    _set(u, "int", n)
    _set(u, "is_safe", _UNKNOWN)
    return u


class RunIds:
    """The ids ``memory_id`` and ``event_uid`` give for one run, derived about 3x faster.

    The SHA-1 state after the namespace and each kind's run prefix is computed
    once; each id then hashes only its own tail. Ids are byte-identical to
    ``uuid.uuid5``'s (the tests compare them). Each method returns the id and
    its text, ASCII-encoded (what Avro's uuid logical type carries).
    """

    __slots__ = ("_memory", "_event")

    def __init__(self, run_id: uuid.UUID | str) -> None:
        self._memory = hashlib.sha1(NAMESPACE.bytes + f"memory/{run_id}/".encode())
        self._event = hashlib.sha1(NAMESPACE.bytes + f"event/{run_id}/".encode())

    def memory(self, agent_id: str, step: int, seq: int) -> tuple[uuid.UUID, bytes]:
        """``memory_id(run_id, agent_id, step, seq)`` and its text."""
        h = self._memory.copy()
        h.update(f"{agent_id}/{step}/{seq}".encode())
        return _finish(h.digest())

    def event(self, subject: str, step: int, seq: int) -> tuple[uuid.UUID, bytes]:
        """``event_uid(run_id, step, subject, seq)`` and its text (arguments in ``memory``'s order)."""
        h = self._event.copy()
        h.update(f"{subject}/{step}/{seq}".encode())
        return _finish(h.digest())


def _finish(digest: bytes) -> tuple[uuid.UUID, bytes]:
    n = (int.from_bytes(digest[:16], "big") & _CLEAR) | _SET
    h = b"%032x" % n
    return _uuid_of_int(n), b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
