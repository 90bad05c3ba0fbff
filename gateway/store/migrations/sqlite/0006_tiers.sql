-- Hutong hub schema, version 6 (SQLite): tiered identification of the low-income population (分层分类).
--
-- Each person's current tier, decided by the hub's tier rules from their enrollments, their
-- household's declared income and the local standards in force (gateway.domain.tiers), with the
-- evidence that reproduces the decision. The rule sets and standards registries decisions were
-- made under are kept by digest, so that old evidence still reproduces.

CREATE TABLE tier_inputs (
    digest       BLOB    PRIMARY KEY,       -- SHA-256 of the canonical text
    kind         TEXT    NOT NULL,          -- 'rules' or 'standards'
    version      TEXT    NOT NULL,          -- the rules' version; '' for a standards registry
    text         TEXT    NOT NULL,          -- the canonical text (rules TOML, registry JSON)
    loaded_at_us INTEGER NOT NULL
);

-- What the stored decisions were computed under: one row (id 1) once tiering has run.
CREATE TABLE tier_state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    rules_digest     BLOB    NOT NULL,
    standards_digest BLOB    NOT NULL,
    day              TEXT    NOT NULL       -- YYYY-MM-DD: standards in force on this day were applied
);

CREATE TABLE tiers (
    person_key         BLOB    PRIMARY KEY,
    province           TEXT    NOT NULL,    -- the province of the person's newest live record
    residence_division TEXT    NOT NULL,    -- where the standards were read
    tier               TEXT    NOT NULL,    -- a tier id of the rules; '' when no tier matched
    rules_digest       BLOB    NOT NULL,
    standards_digest   BLOB    NOT NULL,
    day                TEXT    NOT NULL,
    evidence           TEXT    NOT NULL,    -- canonical JSON (gateway.domain.tiers): reproduces the decision
    decided_at_us      INTEGER NOT NULL,
    changed_at_us      INTEGER NOT NULL     -- when the tier last changed
);
-- Counts per province and tier (hutong hub tiers, the console); re-tiering after a standard changes.
CREATE INDEX tiers_by_province ON tiers (province, tier);
CREATE INDEX tiers_by_residence ON tiers (residence_division);

-- Persons to decide again: marked in the transaction of whatever changed them, taken by the
-- hub's tiering task. A mark made while a decision is being computed survives it (marked_us).
CREATE TABLE tier_dirty (
    person_key BLOB    PRIMARY KEY,
    marked_us  INTEGER NOT NULL
);
