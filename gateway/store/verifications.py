"""The hub's verifications table (``migrations/*/0005_verification.sql``), on any engine.

Functions over a connection the store hands them, inside its transactions, like the loop's and
the linkage's ledgers. The hub seals what names persons (the request, the report) before it
gets here; this module stores and finds rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.store.engine import Connection

__all__ = ["COMPLETE", "PENDING", "StoredVerification", "claim_pending", "complete", "find", "start"]

#: hutong.v1.VerificationState numbers.
PENDING = 1
COMPLETE = 2
_KEY_BYTES = 16
_COLUMNS = (
    "verification_id, province, node, request_id, request_digest, sealed_request, person_keys, purpose, state,"
    " created_at_us, lease_until_us, completed_at_us, sealed_report"
)


@dataclass(frozen=True, slots=True)
class StoredVerification:
    """One verification as stored."""

    verification_id: str
    province: str
    node: str
    request_id: str
    request_digest: bytes
    sealed_request: bytes
    person_keys: tuple[bytes, ...]
    purpose: int
    state: int
    created_at_us: int
    lease_until_us: int
    completed_at_us: int = 0
    sealed_report: bytes | None = None


def _row(row: Any) -> StoredVerification:
    keys = bytes(row[6])
    return StoredVerification(
        verification_id=str(row[0]),
        province=str(row[1]),
        node=str(row[2]),
        request_id=str(row[3]),
        request_digest=bytes(row[4]),
        sealed_request=bytes(row[5]),
        person_keys=tuple(keys[i : i + _KEY_BYTES] for i in range(0, len(keys), _KEY_BYTES)),
        purpose=int(row[7]),
        state=int(row[8]),
        created_at_us=int(row[9]),
        lease_until_us=int(row[10]),
        completed_at_us=int(row[11]),
        sealed_report=None if row[12] is None else bytes(row[12]),
    )


def start(con: Connection, v: StoredVerification) -> tuple[StoredVerification, bool]:
    """Insert ``v``; or, when its province already used its request id, (that verification, True)."""
    cur = con.execute(
        f"INSERT INTO verifications ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
        (
            v.verification_id,
            v.province,
            v.node,
            v.request_id,
            v.request_digest,
            v.sealed_request,
            b"".join(v.person_keys),
            v.purpose,
            v.state,
            v.created_at_us,
            v.lease_until_us,
            v.completed_at_us,
            v.sealed_report,
        ),
    )
    if cur.rowcount > 0:
        return v, False
    row = con.execute(
        f"SELECT {_COLUMNS} FROM verifications WHERE province=? AND request_id=?", (v.province, v.request_id)
    ).fetchone()
    if row is None:  # the conflict was on the verification id: a new random id collided (never in practice)
        raise ValueError(f"verification id {v.verification_id} is taken")
    return _row(row), True


def find(con: Connection, verification_id: str) -> StoredVerification | None:
    """The verification of this id."""
    row = con.execute(f"SELECT {_COLUMNS} FROM verifications WHERE verification_id=?", (verification_id,)).fetchone()
    return None if row is None else _row(row)


def claim_pending(con: Connection, *, now: int, lease_us: int, limit: int) -> list[StoredVerification]:
    """Pending verifications nobody holds (their lease ran out), now held by the caller until ``now + lease_us``."""
    rows = con.execute(
        f"SELECT {_COLUMNS} FROM verifications WHERE state=? AND lease_until_us<? ORDER BY created_at_us LIMIT ?",
        (PENDING, now, limit),
    ).fetchall()
    claimed = []
    for row in rows:
        v = _row(row)
        taken = con.execute(
            "UPDATE verifications SET lease_until_us=? WHERE verification_id=? AND state=? AND lease_until_us=?",
            (now + lease_us, v.verification_id, PENDING, v.lease_until_us),
        ).rowcount
        if taken:
            claimed.append(v)
    return claimed


def complete(con: Connection, verification_id: str, sealed_report: bytes, now: int) -> StoredVerification | None:
    """Store the report and mark the verification complete; None if it was complete already (another replica)."""
    done = con.execute(
        "UPDATE verifications SET state=?, completed_at_us=?, sealed_report=? WHERE verification_id=? AND state=?",
        (COMPLETE, now, sealed_report, verification_id, PENDING),
    ).rowcount
    return find(con, verification_id) if done else None
