-- Hutong hub schema, version 5 (PostgreSQL): household economic-status verifications (核对).
-- Equivalent to migrations/sqlite/0005_verification.sql (same columns in the same order, same
-- index names). Not partitioned: a verification is a short-lived request, not population data,
-- and is found by its id or its requester's key.

CREATE TABLE verifications (
    verification_id text COLLATE "C" PRIMARY KEY,
    province        text COLLATE "C" NOT NULL,  -- the requesting province (from the caller's certificate)
    node            text COLLATE "C" NOT NULL,  -- the requesting node's name
    request_id      text COLLATE "C" NOT NULL,  -- the caller's idempotency key, unique per province
    request_digest  bytea  NOT NULL,            -- SHA-256 of the canonical request
    sealed_request  bytea  NOT NULL,            -- the canonical request, sealed
    person_keys     bytea  NOT NULL,            -- the members' person keys, 16 bytes each, in request order
    purpose         bigint NOT NULL,            -- hutong.v1.Purpose
    state           bigint NOT NULL,            -- hutong.v1.VerificationState: 1 pending, 2 complete
    created_at_us   bigint NOT NULL,
    lease_until_us  bigint NOT NULL,            -- a hub replica asking the sources holds the verification until then
    completed_at_us bigint NOT NULL DEFAULT 0,
    sealed_report   bytea                       -- hutong.v1.VerificationReport, sealed; NULL while pending
);
CREATE UNIQUE INDEX verifications_request ON verifications (province, request_id);
CREATE INDEX verifications_pending ON verifications (state, lease_until_us);
