-- Hutong hub schema, version 5 (SQLite): household economic-status verifications (核对).
--
-- One row per verification a province asked for. The request (it names the members by ID number)
-- and the report (it may hold sensitive amounts) are sealed like records' ID numbers and names
-- (AES-256-GCM or SM4-GCM with a key id, bound to the verification id); what the hub needs to find,
-- resume and audit a verification is in the clear: who asked, the digest of what they asked, the
-- members' person keys (keyed hashes), the state.

CREATE TABLE verifications (
    verification_id TEXT    PRIMARY KEY,
    province        TEXT    NOT NULL,          -- the requesting province (from the caller's certificate)
    node            TEXT    NOT NULL,          -- the requesting node's name
    request_id      TEXT    NOT NULL,          -- the caller's idempotency key, unique per province
    request_digest  BLOB    NOT NULL,          -- SHA-256 of the canonical request: a reused id with other content is refused
    sealed_request  BLOB    NOT NULL,          -- the canonical request (hutong.v1.RequestVerificationRequest), sealed
    person_keys     BLOB    NOT NULL,          -- the members' person keys, 16 bytes each, in request order
    purpose         INTEGER NOT NULL,          -- hutong.v1.Purpose
    state           INTEGER NOT NULL,          -- hutong.v1.VerificationState: 1 pending, 2 complete
    created_at_us   INTEGER NOT NULL,
    lease_until_us  INTEGER NOT NULL,          -- a hub replica asking the sources holds the verification until then
    completed_at_us INTEGER NOT NULL DEFAULT 0,
    sealed_report   BLOB                       -- hutong.v1.VerificationReport, sealed; NULL while pending
);
-- Idempotency: a repeated request of a province finds its verification.
CREATE UNIQUE INDEX verifications_request ON verifications (province, request_id);
-- Resuming after a restart: pending verifications whose lease ran out.
CREATE INDEX verifications_pending ON verifications (state, lease_until_us);
