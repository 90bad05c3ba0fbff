"""The verifications table (gateway.store.verifications) through the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses

from gateway.store.base import NodeRef
from gateway.store.sql import SqlStore
from gateway.store.verifications import COMPLETE, PENDING, StoredVerification

GZ = NodeRef("440000", "gz-01")
KEYS = (b"\x01" * 16, b"\x02" * 16)


def verification(verification_id: str, request_id: str = "r-1", *, lease_until_us: int = 2**62) -> StoredVerification:
    return StoredVerification(
        verification_id=verification_id,
        province=GZ.province_code,
        node=GZ.node_name,
        request_id=request_id,
        request_digest=b"d" * 32,
        sealed_request=b"sealed request",
        person_keys=KEYS,
        purpose=1,
        state=PENDING,
        created_at_us=1_000,
        lease_until_us=lease_until_us,
    )


async def test_a_verification_is_stored_once_per_province_and_request_id(store: SqlStore) -> None:
    first, replayed = await store.start_verification(verification("vf-1"))
    assert not replayed
    assert first.person_keys == KEYS
    again, replayed = await store.start_verification(verification("vf-2"))
    assert replayed
    assert again == first  # the first one, whatever id the second attempt drew
    assert await store.verification("vf-2") is None
    found = await store.verification("vf-1")
    assert found == first
    _, replayed = await store.start_verification(dataclasses.replace(verification("vf-3"), province="410000"))
    assert not replayed  # request ids are the province's own


async def test_completing_stores_the_report_once_and_tells_the_province_once(store: SqlStore) -> None:
    await store.start_verification(verification("vf-1"))
    done = await store.complete_verification("vf-1", b"sealed report", "1 of 1 sources answered")
    assert done is not None
    assert (done.state, done.sealed_report) == (COMPLETE, b"sealed report")
    assert done.completed_at_us > 0
    assert await store.complete_verification("vf-1", b"another", "again") is None  # another replica was first
    assert (await store.verification("vf-1")).sealed_report == b"sealed report"  # type: ignore[union-attr]
    events = await store.events_after(GZ.province_code, 0)
    assert [(e.kind, e.body["verificationId"], e.respond_by_us) for e in events] == [(8, "vf-1", 0)]


async def test_pending_verifications_whose_lease_ran_out_are_claimed_by_one_replica(store: SqlStore) -> None:
    await store.start_verification(verification("vf-held", "r-1"))  # its replica still holds it
    await store.start_verification(verification("vf-left", "r-2", lease_until_us=0))
    await store.start_verification(verification("vf-done", "r-3", lease_until_us=0))
    await store.complete_verification("vf-done", b"r", "done")
    claimed = await store.claim_pending_verifications(lease_us=60_000_000)
    assert [v.verification_id for v in claimed] == ["vf-left"]
    assert await store.claim_pending_verifications(lease_us=60_000_000) == []  # now held
    held = await store.verification("vf-left")
    assert held is not None
    assert held.lease_until_us > 60_000_000
