"""The ``hutong`` command. Subcommands parse arguments and delegate; no logic lives here.

Exit codes: 0 success; 1 unexpected failure; 2 usage error; 3 local configuration or files
wrong; 4 the hub refused the request (bad input, permission); 5 the hub is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import errors
from pki import TlsMaterial

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_REFUSED = 4
EXIT_UNAVAILABLE = 5

_PURPOSES = {
    "eligibility-review": 1,
    "duplicate-check": 2,
    "cross-region-application": 3,
    "monitoring-follow-up": 4,
    "audit": 5,
}
_PROGRAMS = {
    "dibao": 1,
    "extreme-poverty": 2,
    "dibao-marginal": 3,
    "rigid-expenditure": 4,
    "temporary-assistance": 5,
    "medical": 6,
    "education": 7,
    "housing": 8,
    "employment": 9,
}


def _split_listen(value: str) -> tuple[str, int]:
    from gateway.toml_config import parse_listen

    try:
        return parse_listen(value, field="--listen", default_host="127.0.0.1")
    except errors.ConfigError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}") from None


def _add_tls(p: argparse.ArgumentParser, who: str, *, config_keys: bool = False) -> None:
    g = p.add_argument_group("mTLS", f"the {who}'s certificate and key, and the ministry CA certificate")
    # hutong hub serve names the hub.toml key each flag overrides.
    key = {name: f" [tls.{name}]" if config_keys else "" for name in ("cert", "key", "ca")}
    g.add_argument("--cert", type=Path, help=f"PEM certificate (chain) of the {who}{key['cert']}")
    g.add_argument("--key", type=Path, help=f"PEM private key of the {who} (mode 0600){key['key']}")
    g.add_argument(
        "--ca", type=Path, help=f"PEM certificates of the ministry CA (a chain file: intermediate + root){key['ca']}"
    )


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, metavar="FILE", help="the hub's hub.toml (deploy/hub.example.toml); flags override it"
    )


def _add_data_dir_or_config(p: argparse.ArgumentParser) -> None:
    _add_config(p)
    p.add_argument("--data-dir", type=Path, help="the hub's data directory [hub.data_dir]")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hutong",
        description="Hutong (互通): the ministry-to-province data exchange for social assistance.",
        epilog="Start with `hutong demo`: a hub and three province nodes on this machine, over real mTLS.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default: info)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a hub and three province nodes on localhost and show the whole exchange",
        description="Creates a throwaway CA and certificates, starts a hub (SQLite) on loopback, generates a "
        "realistic population for three provinces (some persons enrolled in two provinces), syncs it over mTLS, "
        "resends a batch to show idempotency, asks cross-province questions, revokes one node's certificate "
        "while it is connected, and prints a summary. The hub runs with an access policy and the CA's CRL, and "
        "every node call carries a certificate-bound access token.",
    )
    demo.add_argument(
        "--data-dir", type=Path, help="where to keep the hub's data and certificates (default: a temp dir)"
    )
    demo.add_argument("--persons", type=int, default=20_000, help="persons per province (default: 20000)")
    demo.add_argument("--seed", type=int, default=20261130, help="seed of the synthetic population")
    demo.add_argument(
        "--console",
        type=int,
        nargs="?",
        const=7081,
        metavar="PORT",
        help="afterwards, keep the hub running with its web console on https://localhost:PORT (default 7081) "
        "and print a login token, until Ctrl-C",
    )

    hub = sub.add_parser("hub", help="run and manage the ministry hub").add_subparsers(
        dest="hub_command", required=True
    )
    serve = hub.add_parser(
        "serve",
        help="serve the hub's gRPC API over mTLS",
        description="Serves every hutong.v1 service (auth, records, queries, notifications, signals, audit, linkage "
        "review, verification), gRPC health and "
        "reflection. Client certificates must chain to the CA and carry a hutong://province/<code>/node/<name> URI; "
        "every call but AuthService.IssueToken needs an access token bound to that certificate. "
        "Settings come from --config hub.toml (every key: deploy/CONFIG.md; relative paths are the file's) and "
        "the flags below, which override the file's keys (named in brackets). With a node directory the hub "
        "answers FetchRecordDetail, and household verifications (VerificationService), by asking the province nodes "
        "and department sources listed there (mTLS with the hub's own certificate). "
        "SIGTERM or SIGINT drains open streams and stops. Exit 3 on a configuration error, naming the key.",
    )
    _add_config(serve)
    serve.add_argument(
        "--data-dir", type=Path, help="directory of the key files and the SQLite database [hub.data_dir]"
    )
    serve.add_argument(
        "--listen",
        type=_split_listen,
        help="HOST:PORT (default 127.0.0.1:7443; port 0 picks one) [hub.listen]",
    )
    serve.add_argument(
        "--health-listen",
        type=_split_listen,
        help="HOST:PORT of a plaintext port serving only grpc.health.v1.Health, for probes that cannot present "
        "a client certificate (Kubernetes grpc probes); default: none [hub.health_listen]",
    )
    serve.add_argument(
        "--console-listen",
        type=_split_listen,
        help="HOST:PORT of the HTTPS console: /healthz, /readyz, /metrics (Prometheus), "
        "/.well-known/jwks.json and /crl; default: none [hub.console_listen]",
    )
    _add_tls(serve, "hub", config_keys=True)
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext on loopback for debugging; callers name themselves [hub.insecure]",
    )
    serve.add_argument("--port-file", type=Path, help="write the bound port here once serving [hub.port_file]")
    serve.add_argument(
        "--crypto-suite",
        choices=("intl", "sm"),
        help="intl (HMAC-SHA-256, AES-256-GCM) or sm (HMAC-SM3, SM4-GCM) for person keys and sealed fields;"
        " fixed when the data directory is created (default there: intl) [hub.crypto_suite]",
    )
    serve.add_argument(
        "--policy",
        type=Path,
        help="access policy (TOML): scopes per node, purposes per scope, rate limits [policy.file]",
    )
    serve.add_argument(
        "--crl",
        type=Path,
        help="the CA's CRL (PEM or DER); checked on every call, reloaded when the file changes [tls.crl]",
    )
    serve.add_argument(
        "--ca-registry",
        type=Path,
        metavar="FILE",
        help="the CA directory's registry.sqlite3 (read-only): the console's Certificates page and certificate "
        "expiry per node [tls.ca_registry]",
    )
    serve.add_argument("--max-batch", type=int, help="largest batch accepted (default 5000) [sync.max_batch]")
    serve.add_argument(
        "--audit-origin",
        help="the exchange log's permanent name, fixed on first start (default: <hub DNS name>/hutong-audit)"
        " [audit.origin]",
    )
    serve.add_argument(
        "--checkpoint-seconds",
        type=float,
        help="seconds between signed checkpoints of the exchange log while it grows (default 10)"
        " [audit.checkpoint_seconds]",
    )
    serve.add_argument(
        "--grace", type=float, help="seconds open calls get on shutdown (default 10) [hub.grace_seconds]"
    )
    serve.add_argument(
        "--node-directory",
        type=Path,
        metavar="FILE",
        help="federation directory (TOML): each province node's address, for FetchRecordDetail; see "
        "deploy/README.md [federation.node_directory]",
    )
    serve.add_argument(
        "--monitoring-rules",
        type=Path,
        metavar="FILE",
        help="monitoring rules (TOML) evaluated on households as they change; see deploy/monitoring.example.toml "
        "[monitoring.rules]",
    )
    serve.add_argument(
        "--tier-rules",
        type=Path,
        metavar="FILE",
        help="tier rules (TOML, deploy/tiers.example.toml): tier every person held and push changes of tier "
        "[tiers.rules]",
    )
    serve.add_argument(
        "--standards",
        type=Path,
        action="append",
        metavar="FILE",
        help="local standards published by a province (CSV, deploy/standards.example.csv); repeatable, merged in "
        "order; needs --tier-rules [tiers.standards]",
    )

    migrate = hub.add_parser(
        "migrate",
        help="apply pending schema migrations to the hub's database; print the version before and after",
        description="Opens the database named by store.url (default: SQLite in the data directory), applies every "
        "pending migration, each in its own transaction, and prints the schema version before and after. Run it "
        "before starting a new release (with PostgreSQL: once, before the replicas). With --create-keys it also "
        "prepares a new data directory. Exit 0; 3 on a bad config.",
    )
    _add_data_dir_or_config(migrate)
    migrate.add_argument(
        "--create-keys",
        action="store_true",
        help="also create the key files a first start would (keys.json in hub.crypto_suite, token-keys.json, "
        "audit-note.key for audit.origin) where missing: replicas must share one set, so make it once, first",
    )
    backup = hub.add_parser(
        "backup",
        help="back up the database, the key files and the newest checkpoint, with a manifest of hashes",
        description="Copies the SQLite database with SQLite's online backup API (safe while the hub runs: a "
        "consistent copy as of one instant), keys.json, token-keys.json and audit-note.key (mode 0600), the key "
        "binding, the newest signed checkpoint, and writes manifest.json (every file's SHA-256, the schema version, "
        "the exchange log's size and root) last. With a PostgreSQL store.url it copies the keys and the checkpoint "
        "and prints the pg_dump command for the database (deploy/README.md). OUT must be new or empty. "
        "Exit 0; 3 when something is missing or OUT is not empty.",
    )
    _add_data_dir_or_config(backup)
    backup.add_argument("--out", type=Path, required=True, help="the backup directory (new or empty)")
    restore = hub.add_parser(
        "restore",
        help="verify a backup and restore it into a new, empty data directory",
        description="Checks every file against the manifest's SHA-256 (naming the first that does not match) and "
        "the checkpoint's signature before writing anything, then restores the files (keys 0600) into the data "
        "directory, which must be new or empty. Exit 0; 3 when the backup is damaged or the target is not empty.",
    )
    _add_data_dir_or_config(restore)
    restore.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR", help="the backup directory")

    loop = hub.add_parser(
        "loop",
        help="the closed loop per province: events pushed, acknowledged, reported back, overdue",
        description="Reads the hub's database, the one store.url names (default: SQLite in the data directory), "
        "read-only: a running hub is fine. Overdue means past its respond_by time without an outcome. Exit 0; 3 "
        "when there is no hub database or its schema is older than this release (run hutong hub migrate); 4 when "
        "some province has overdue events.",
    )
    _add_data_dir_or_config(loop)
    loop.add_argument("--json", action="store_true", help="print JSON")
    tiers = hub.add_parser(
        "tiers",
        help="tiered identification: persons per tier per province, with the untiered and totals",
        description="Reads the hub's database, the one store.url names (default: SQLite in the data directory), "
        "read-only: a running hub is fine. Tiers are ordered and labelled by the tier rules the decisions were "
        "made under (kept in the database), else by tiers.rules in --config, else by id; a tier the rules do not "
        "name (older rules) is shown by id. --json prints [{province, tier, persons}], tier '' for the untiered. "
        "Exit 0; 3 when there is no hub database or its schema is older than this release (run hutong hub "
        "migrate).",
    )
    _add_data_dir_or_config(tiers)
    tiers.add_argument("--json", action="store_true", help="print JSON")
    standards = hub.add_parser(
        "standards",
        help="check standards files (CSV) as the hub reads them; the values in force at a division on a day",
        description="Reads each FILE as hutong hub serve --standards does (deploy/standards.example.csv documents the "
        "columns), prints every rejected row with its line and reason and the merged registry's digest; with "
        "--division, the dibao (urban, rural) and extreme-poverty standards in force there on --date (default: "
        "today in China) with the division that set them, and their history. Exit 0 when every row loaded, 4 when "
        "some were rejected, 3 when a file cannot be read or its header is wrong.",
    )
    standards.add_argument("files", nargs="+", type=Path, metavar="FILE", help="standards files, merged in order")
    standards.add_argument("--division", help="a 6-digit GB/T 2260 county-level code (e.g. 440106)")
    standards.add_argument("--date", help="YYYY-MM-DD (default: today in China)")
    standards.add_argument("--json", action="store_true", help="print JSON")
    rules_check = hub.add_parser(
        "rules-check",
        help="check a monitoring rules file and print its digest",
        description="Exit 0 when the file is valid (its canonical digest is printed), 3 naming the key otherwise.",
    )
    rules_check.add_argument("file", type=Path, help="the rules file (TOML)")

    jwks = hub.add_parser(
        "jwks",
        help="print the public keys that verify the hub's access tokens (JSON Web Key Set)",
        description="Prints the JWKS of the hub's token-signing keys, for services that verify Hutong tokens.",
    )
    jwks.add_argument("--data-dir", type=Path, required=True, help="the hub's data directory")
    rotate = hub.add_parser(
        "rotate-token-key",
        help="add a new token-signing key; API tokens signed by older keys stay valid, console sessions end",
        description="Adds a new signing key to token-keys.json; the newest signs, the previous --keep keys "
        "still verify API tokens (nodes fetch new ones within minutes). Console sessions verify against the "
        "newest key only: rotating ends every one. Restart the hub (or every replica) to use the new key.",
    )
    rotate.add_argument("--data-dir", type=Path, required=True, help="the hub's data directory")
    rotate.add_argument("--keep", type=int, default=3, help="older keys kept for verification (default 3)")
    console_token = hub.add_parser(
        "console-token",
        help="issue a login token for the web console (an operator's or auditor's browser session)",
        description="Signs a console login token with the hub's newest token key: audience hutong-console, so the "
        "gRPC API refuses it, and not bound to a certificate, so whoever holds it is the person it names until "
        "it expires: hand it over as you would a password. Paste it into the console's /login page (or send it as "
        "'Authorization: Bearer'). Printed on stdout. Exit 0; 3 on a bad role or lifetime.",
    )
    console_token.add_argument("--data-dir", type=Path, required=True, help="the hub's data directory")
    console_token.add_argument(
        "--subject", required=True, help="who the token is for, as the exchange log will name them (e.g. auditor:li.na)"
    )
    console_token.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["admin", "audit:read", "query:detail"],
        help="a console role (repeat for more): admin (operators), audit:read (auditors), query:detail "
        "(may reveal full ID numbers and names on the person page)",
    )
    console_token.add_argument("--hours", type=float, default=8.0, help="lifetime in hours (default 8, at most 24)")
    linkage = hub.add_parser(
        "linkage",
        help="identity linkage: train a model, show what linkage holds, print a model",
        description="Records whose province flagged their ID number unverified are linked to persons within the "
        "sync call (see the README, 'Identity linkage'). These commands read the hub's key files and its database "
        "(--config hub.toml or --data-dir, as for hutong hub serve; SQLite or PostgreSQL); a running hub is fine, "
        "and links with a newly trained model from its next start. They never migrate: a database of an older "
        "release is refused (exit 3) until hutong hub migrate has run.",
    ).add_subparsers(dest="linkage_command", required=True, metavar="LINKAGE_COMMAND")
    train = linkage.add_parser(
        "train",
        help="estimate a new model from the hub's records and store it as the newest version",
        description="Unseals an evenly spread sample of the live records in this process (never writing them out), "
        "estimates u from random pairs, m by EM over blocked pairs and the match prior, and stores the model JSON "
        "as a new version. Exit 0; 3 when the hub holds too few records.",
    )
    _add_data_dir_or_config(train)
    train.add_argument("--sample", type=int, default=100_000, help="records to train on, at most (default 100,000)")
    train.add_argument(
        "--min-records", type=int, default=1000, help="refuse to train on fewer records than this (default 1,000)"
    )
    train.add_argument("--json", action="store_true", help="print JSON")
    linkage_status = linkage.add_parser(
        "status",
        help="model versions, unverified records, links, review items, lineage events",
        description="Lists every model version (source, records trained on, when first used) and counts.",
    )
    _add_data_dir_or_config(linkage_status)
    linkage_status.add_argument("--json", action="store_true", help="print JSON")
    linkage_model = linkage.add_parser(
        "model",
        help="print a model's JSON: every weight its links were scored with",
        description="Prints the newest model, or --version N; links and review items name the version that "
        "scored them.",
    )
    _add_data_dir_or_config(linkage_model)
    linkage_model.add_argument("--version", type=int, help="the model version (default: the newest)")

    signals = sub.add_parser(
        "signals", help="departments: submit risk signals to the hub (scope signals:write)"
    ).add_subparsers(dest="signals_command", required=True)
    submit = signals.add_parser(
        "submit",
        help="submit a JSON Lines file of hutong.v1.Signal (protobuf JSON) to the hub",
        description="Each line is one Signal: signalId, kind (SIGNAL_KIND_LARGE_MEDICAL_EXPENSE, ..._DISASTER, "
        "..._JOB_LOSS, ..._DEATH), idNumber, name, occurredOn {year, month, day}, amountFen, residenceDivision, note. "
        "The hub pushes each to the provinces holding the person, or to the stated residence. Safe to run again "
        "over the same file. Exit 0 when all were pushed, 4 when some were refused, 3 when a line is not a Signal.",
    )
    submit.add_argument("file", type=Path, help="the signals, one JSON object per line")
    submit.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    submit.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(submit, "department")

    query = sub.add_parser("query", help="ask the hub cross-province questions").add_subparsers(
        dest="query_command", required=True
    )
    for name, text in (
        ("check", "is this person enrolled anywhere? (yes/no per programme, holding provinces)"),
        ("lookup", "the person's enrollments across provinces, fields filtered by purpose"),
        ("detail", "the person's full records, fetched live from the holding provinces' nodes (scope query:detail)"),
    ):
        q = query.add_parser(name, help=text, description=text)
        q.add_argument("--hub", required=True, help="HOST:PORT of the hub")
        if name == "detail":
            q.add_argument("id_number", metavar="ID", help="citizen ID number (18 or 15 characters)")
            q.add_argument("--province", default="", help="ask only this province (6-digit code); default: every one")
            q.add_argument("--json", action="store_true", help="print the hub's answer as JSON")
        else:
            q.add_argument("--id", dest="id_number", required=True, help="citizen ID number (18 or 15 characters)")
        q.add_argument("--purpose", required=True, choices=sorted(_PURPOSES), help="why you ask (recorded)")
        if name == "check":
            q.add_argument("--program", action="append", choices=sorted(_PROGRAMS), help="repeatable; default all")
        q.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
        _add_tls(q, "node")

    verifying = sub.add_parser(
        "verify", help="household economic-status verification across provinces (核对; scope verification:request)"
    ).add_subparsers(dest="verify_command", required=True)
    verify_request = verifying.add_parser(
        "request",
        help="ask every province and department source about a household's income and assets",
        description="Starts a verification at the hub, which asks every province node and department source at "
        "once, each within its deadline. Needs the household's signed consent: its id, the document (its SHA-256 is "
        "sent, not the file) or the hash, and the signing date. With --wait, waits for the report and prints it "
        "(ID numbers masked). Safe to run again with the same --request-id. Exit 0: started, or complete with every "
        "source answering; 4: complete, some source timed out, refused or failed (the report names it); 5: --wait "
        "ran out; 3: bad input.",
    )
    verify_request.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    verify_request.add_argument(
        "--member", action="append", required=True, metavar="ID[,NAME]", help="a household member (repeatable, 1-20)"
    )
    verify_request.add_argument("--consent-id", required=True, help="the signed authorization's id")
    verify_request.add_argument("--consent-file", type=Path, help="the signed authorization (only its hash is sent)")
    verify_request.add_argument("--consent-sha256", help="or: the authorization's SHA-256, hex")
    verify_request.add_argument("--consent-date", required=True, metavar="YYYY-MM-DD", help="the day it was signed")
    verify_request.add_argument(
        "--purpose", required=True, choices=["eligibility-review", "monitoring-follow-up"], help="why (recorded)"
    )
    verify_request.add_argument(
        "--class",
        dest="classes",
        action="append",
        required=True,
        metavar="CLASS",
        help="an item class (repeatable): wage_income, pension, business_registration, real_estate, vehicle, "
        "deposit, securities, commercial_insurance, housing_fund",
    )
    verify_request.add_argument("--request-id", help="your id for the request (default: a new UUID)")
    verify_request.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait for the report")
    verify_request.add_argument("--json", action="store_true", help="print the hub's answer as JSON")
    verify_request.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(verify_request, "node")
    verify_get = verifying.add_parser(
        "get",
        help="a verification's state and report",
        description="Only nodes of the requesting province may read it. Exit 0 complete, 4 complete with some "
        "source not answering, 5 still pending.",
    )
    verify_get.add_argument("verification_id", metavar="ID", help="the id `verify request` printed")
    verify_get.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    verify_get.add_argument("--json", action="store_true", help="print the hub's answer as JSON")
    verify_get.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(verify_get, "node")

    adapt = sub.add_parser(
        "adapt",
        help="turn a province export into standard records with its profile; every row accounted for",
        description="Reads each FILE with the profile's format (CSV/TSV, fixed-width, XML, DBF, Excel, JSON Lines) and "
        "writes one hutong.v1.PersonRecord per valid row (protobuf JSON, one per line) and one JSON line per rejected "
        "row with every problem found. Prints rows read = records + rejected. Exit 0 when nothing was rejected, 4 when "
        "rows were rejected or a file could not be read, 3 when the profile is invalid. `hutong adapt profile-lint P` "
        "only validates a profile. The profile format: adapters/README.md.",
    )
    adapt.add_argument("files", nargs="+", metavar="FILE", help="export files (or: profile-lint PROFILE)")
    adapt.add_argument("--profile", type=Path, help="the source's profile (TOML)")
    adapt.add_argument("-o", "--out", type=Path, help="records file (JSON Lines; default: standard output)")
    adapt.add_argument("--rejects", type=Path, help="reject file (JSON Lines); without it the first rejects are shown")
    adapt.add_argument(
        "--households", type=Path, help="households file (JSON Lines of hutong.v1.Household; profiles with [household])"
    )
    adapt.add_argument("--check", action="store_true", help="validate only: read everything, write nothing")

    node = sub.add_parser(
        "node",
        help="run a province node: sync exports to the hub, serve record details",
        description="A province node reads its exports with the province's adapter profile, keeps every record in a "
        "local outbox (SQLite) and streams changes to the hub; it serves the details the ministry does not store. "
        "Its settings are one TOML file: every key is in deploy/CONFIG.md, an example per province in deploy/nodes/.",
    ).add_subparsers(dest="node_command", required=True, metavar="NODE_COMMAND")
    node_sync = node.add_parser(
        "sync",
        help="adapt export files into the outbox and send what changed to the hub",
        description="Each FILE is read with the node's profile; every record goes into the outbox before anything is "
        "sent, and is marked sent only on the hub's acknowledgement, so a node or hub killed at any moment resumes "
        "where it stopped when the command runs again. A re-export sends only the records whose content changed; "
        'with sync.mode = "snapshot" the records the export no longer holds are retired at the hub. Without FILEs '
        "the command sends what the outbox still holds (resuming an interrupted run). Exit 0 when everything was "
        "acknowledged and nothing rejected, 4 when rows or records were rejected, 5 when the hub stayed unreachable "
        "past sync.retry_deadline_seconds (run it again to resume), 3 on a configuration error.",
    )
    node_sync.add_argument("files", nargs="*", metavar="FILE", help="export files making up this run")
    node_sync.add_argument("--watch", action="store_true", help="keep taking new files from sync.drop_dir")
    node_sync.add_argument(
        "--allow-mass-retire",
        action="store_true",
        help="retire records even when a snapshot drops more than sync.max_retire_fraction of them",
    )
    node_status = node.add_parser(
        "status",
        help="outbox depth, inbox, last acknowledgement, last error, certificate expiry",
        description="Reads the outbox and the node certificate; with --hub also asks the hub what it holds.",
    )
    node_status.add_argument("--hub", action="store_true", help="also ask the hub (GetSyncState)")
    node_status.add_argument("--json", action="store_true", help="print one JSON object")
    node_serve = node.add_parser(
        "serve",
        help="serve the hub's federated requests: record details and household verifications (ProvinceNodeService)",
        description="A gRPC server over mTLS that only the hub may call: FetchRecordDetail answers from the node's "
        "outbox, filtered by the stated purpose; AnswerVerification answers a household verification from the "
        "sources in node.toml [verification] (indexed at start, re-read when a file changes). Every call is "
        "appended to the node's own audit log.",
    )
    node_serve.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    node_inbox = node.add_parser(
        "inbox",
        help="deliver the hub's events to the province's system (webhook and/or directory), in order",
        description="Subscribes to the province's events, keeps each in the node's inbox (SQLite) before delivering "
        "it to inbox.webhook_url (signed with HMAC-SHA256, Idempotency-Key = the event id) and/or inbox.directory, "
        "then acknowledges it to the hub. At least once; never twice to the application for one event id. Runs until "
        "SIGTERM; --once delivers what is waiting and exits.",
    )
    node_inbox.add_argument("--once", action="store_true", help="deliver what is waiting, then exit")
    node_report = node.add_parser(
        "report",
        help="report what the province did about an event (结果反馈)",
        description="Sends ReportOutcome for EVENT_ID. Safe to repeat: the same report is recognised.",
    )
    node_report.add_argument("event_id", help="the event's id (from the inbox)")
    node_report.add_argument("--outcome", required=True, choices=["assisted", "not-eligible", "already-handled"])
    node_report.add_argument("--reason", default="", help="why, in the province's words (required for not-eligible)")
    for p in (node_sync, node_status, node_serve, node_inbox, node_report):
        p.add_argument("--config", type=Path, required=True, help="the node's node.toml")

    audit = sub.add_parser(
        "audit",
        help="the exchange log: export, verify (offline), show, prove, watch",
        description="Every call the hub serves is an entry of a Merkle tree whose size and root the hub signs "
        "(C2SP checkpoints). export and verify work offline; show, prove and watch ask a hub (scope audit:read).",
    ).add_subparsers(dest="audit_command", required=True)
    export = audit.add_parser(
        "export",
        help="write the log (entries, leaf hashes, checkpoints, key binding) to a directory",
        description="Reads the hub's key files and, read-only, its database: the one store.url names (default: "
        "SQLite in the data directory; on PostgreSQL in one repeatable-read snapshot), safe while the hub runs. Run "
        "it again on the same directory to archive: finished segments are kept, only the new tail is written. "
        "Nothing is ever deleted.",
    )
    _add_data_dir_or_config(export)
    export.add_argument("--out", type=Path, required=True, help="the export directory")
    export.add_argument(
        "--segment-size", type=int, default=65536, help="entries per segment file, a power of two (default 65536)"
    )
    verify = audit.add_parser(
        "verify",
        help="check an export offline: signatures, roots, consistency; names the first bad entry",
        description="Checks every checkpoint's signature, recomputes every entry's leaf hash and the root at every "
        "checkpoint, and fails (exit 4) naming the first entry or file that does not match and why. Trust comes from "
        "--ca (the key binding in the export must be signed by a hub certificate of this CA) or --verifier-key.",
    )
    verify.add_argument("directory", type=Path, help="the export directory")
    verify.add_argument("--ca", type=Path, help="PEM certificates of the ministry CA")
    verify.add_argument("--verifier-key", help="the hub's checkpoint verifier key (<name>+<hash>+<key>), pinned")
    verify.add_argument(
        "--known",
        type=Path,
        action="append",
        default=[],
        help="a checkpoint seen elsewhere (e.g. a node's watch state file); repeatable; catches a rolled-back log",
    )
    verify.add_argument(
        "--check-entries", action="store_true", help="also check that every entry is in canonical form (slower)"
    )
    show = audit.add_parser(
        "show",
        help="list entries as a table, from a hub or an export",
        description="Filters combine. Times are ISO 8601 (local time unless an offset is given).",
    )
    where = show.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub", help="HOST:PORT of the hub (needs --cert, --key, --ca)")
    where.add_argument("--export", type=Path, help="an export directory")
    show.add_argument("--since", help="entries answered at or after this time")
    show.add_argument("--until", help="entries answered before this time")
    show.add_argument("--province", default="", help="6-digit province code of the caller")
    show.add_argument("--method", default="", help="RPC name, e.g. CheckEnrollment")
    show.add_argument("--purpose", default="", choices=["", *sorted(_PURPOSES)], help="stated purpose")
    show.add_argument("--person-key", default="", help="the person's key (32 hex digits)")
    show.add_argument("--limit", type=int, default=50, help="most entries shown (default 50)")
    show.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(show, "auditor")
    prove = audit.add_parser(
        "prove",
        help="prove that one entry is in the log, against a checkpoint signed by a key the CA vouches for",
    )
    prove.add_argument("--entry", type=int, required=True, help="the entry's index")
    prove.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    prove.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(prove, "auditor")
    watch = audit.add_parser(
        "watch",
        help="(province nodes) remember the newest checkpoint; alarm (exit 4) if the log is ever rewritten",
        description="Fetches the hub's newest checkpoint, checks its signature against the CA-vouched key and, "
        "with a consistency proof, that it extends the one remembered in --state; then remembers it. A rolled-back, "
        "forked or rewritten log fails with exit 4 and keeps the offending checkpoint next to the state file.",
    )
    watch.add_argument("--hub", required=True, help="HOST:PORT of the hub")
    watch.add_argument("--state", type=Path, required=True, help="file holding the newest checkpoint seen")
    watch.add_argument("--interval", type=float, help="keep watching, every this many seconds (default: once)")
    watch.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
    _add_tls(watch, "node")

    # Imported here, with the pki block: rich and the operator API load only when parsing needs them.
    from gateway.pki_commands import STATUSES, duration_arg
    from pki.operator import CertificateKind, RevocationReason

    pki = sub.add_parser(
        "pki",
        help="the ministry CA: init, csr, issue, issue-hub, renew, revoke, crl, list, expiring, inspect",
        description="Operate the ministry CA (an offline root and an online intermediate in one directory), "
        "and make node keys and CSRs at the provinces. See pki/README.md.",
    ).add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")

    def ca_dir_arg(p: argparse.ArgumentParser, *, required: bool = True) -> None:
        p.add_argument("--ca-dir", type=Path, required=required, help="the CA directory made by `hutong pki init`")

    def intermediate_passphrase_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--intermediate-passphrase-file",
            type=Path,
            metavar="FILE",
            help="file holding the intermediate key's passphrase (prompted for on a terminal if it is encrypted)",
        )

    def root_key_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root-passphrase-file", type=Path, metavar="FILE", help="file holding the root key's passphrase"
        )
        p.add_argument(
            "--root-key", type=Path, metavar="FILE", help="the offline root key (default: CA_DIR/offline/root.key)"
        )

    init = pki.add_parser(
        "init",
        help="create a CA directory: offline root, online intermediate, chain, registry",
        description="Creates DIR (which must not exist or be empty) with an ECDSA P-256 root CA whose key is "
        "encrypted with the root passphrase (at least 12 characters) and an intermediate CA signed by it "
        "(path length 0). Keys are written 0600; nothing is ever overwritten. Move DIR/offline/root.key to "
        "offline storage afterwards.",
    )
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--root-passphrase-file",
        type=Path,
        metavar="FILE",
        help="file holding the root key's passphrase (default: prompt, on a terminal only)",
    )
    init.add_argument(
        "--intermediate-passphrase-file",
        type=Path,
        metavar="FILE",
        help="encrypt the intermediate key with this file's passphrase (default: unencrypted, 0600, with a warning)",
    )
    init.add_argument("--root-days", type=int, default=3650, help="root validity in days (default 3650)")
    init.add_argument(
        "--intermediate-days", type=int, default=1825, help="intermediate validity in days (default 1825)"
    )

    csr = pki.add_parser(
        "csr",
        help="at a province: make a node key and its CSR (the key never leaves)",
        description="Writes OUT/<province>-<name>.key (0600) and OUT/<province>-<name>.csr for the node "
        "hutong://province/<province>/node/<name>. Send only the .csr to the ministry.",
    )
    csr.add_argument("--province", required=True, help="6-digit GB/T 2260 province code, e.g. 440000")
    csr.add_argument("--name", required=True, help="node name within the province, e.g. gz-01")
    csr.add_argument("--out", type=Path, required=True, help="directory to write the key and CSR into")
    csr.add_argument(
        "--dns", action="append", metavar="NAME", help="DNS name the hub reaches `hutong node serve` by; repeatable"
    )
    csr.add_argument(
        "--ip", action="append", metavar="ADDRESS", help="IP address the hub reaches `hutong node serve` at; repeatable"
    )

    issue = pki.add_parser(
        "issue",
        help="sign a node's CSR into a certificate (chain: leaf + intermediate)",
        description="Checks the CSR (signature, exactly one hutong:// SAN URI, a known province), signs it with "
        "the intermediate and records it in the registry.",
    )
    issue.add_argument("csr_file", type=Path, metavar="CSR_FILE")
    ca_dir_arg(issue)
    issue.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    issue.add_argument("--out", type=Path, help="certificate chain file (default: CSR_FILE with .pem)")
    issue.add_argument(
        "--server-names",
        action="store_true",
        help="also certify the DNS names and IP addresses the CSR asks for (a node serving the hub's detail "
        "requests); a CSR asking for names is refused without it",
    )
    intermediate_passphrase_arg(issue)

    hub_cert = pki.add_parser(
        "issue-hub",
        help="make the hub's key and certificate (DNS/IP names)",
        description="Writes OUT_DIR/hub.key (0600) and OUT_DIR/hub.pem (leaf + intermediate).",
    )
    ca_dir_arg(hub_cert)
    hub_cert.add_argument("--dns", action="append", metavar="NAME", help="DNS name of the hub; repeatable")
    hub_cert.add_argument("--ip", action="append", metavar="ADDRESS", help="IP address of the hub; repeatable")
    hub_cert.add_argument("--common-name", default="hutong-hub", help="subject CN (default hutong-hub)")
    hub_cert.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    hub_cert.add_argument("--out-dir", type=Path, default=Path(), help="where to write hub.pem and hub.key (default .)")
    intermediate_passphrase_arg(hub_cert)

    renew = pki.add_parser(
        "renew",
        help="a new certificate for the same identity (a new key via --csr)",
        description="Only a currently valid, unrevoked certificate of this CA is renewed, once; the registry "
        "links the old certificate to the new one. With --csr, the CSR must name the same identity.",
    )
    renew.add_argument("cert_file", type=Path, metavar="CERT_FILE")
    ca_dir_arg(renew)
    renew.add_argument("--csr", type=Path, help="CSR with the new key (default: certify the same key again)")
    renew.add_argument("--days", type=int, default=90, help="validity in days (default 90)")
    renew.add_argument("--out", type=Path, help="default: the CSR with .pem, else CERT_FILE's stem + -renewed.pem")
    intermediate_passphrase_arg(renew)

    revoke = pki.add_parser(
        "revoke",
        help="revoke a certificate (then publish with `hutong pki crl`)",
        description="Marks the certificate revoked in the registry. Revoking the intermediate needs the root "
        "key and passphrase and writes the root's CRL (root-crl.pem).",
    )
    revoke.add_argument("target", metavar="SERIAL_OR_CERT_FILE", help="hex serial (colons allowed) or a PEM file")
    ca_dir_arg(revoke)
    revoke.add_argument("--reason", required=True, choices=[r.value for r in RevocationReason])
    root_key_args(revoke)

    crl = pki.add_parser(
        "crl",
        help="sign and publish the CRL (atomic replace, CRL number incremented)",
        description="Signs a CRL listing every revoked certificate with its reason and date, numbered one "
        "higher than the last, and replaces the file atomically so a hub reloading it never reads half of it.",
    )
    ca_dir_arg(crl)
    crl.add_argument("--out", type=Path, help="default: CA_DIR/crl.pem (CA_DIR/root-crl.pem with --root)")
    crl.add_argument("--next-update-hours", type=int, help="hours until the next update (default 24; 8760 with --root)")
    intermediate_passphrase_arg(crl)
    crl.add_argument("--root", action="store_true", help="sign the root's CRL of revoked intermediates instead")
    root_key_args(crl)

    listing = pki.add_parser("list", help="every certificate in the registry", description="Soonest expiry first.")
    ca_dir_arg(listing)
    listing.add_argument("--province", help="only this province's nodes, e.g. 440000")
    listing.add_argument("--status", choices=STATUSES, help="issued/revoked as stored, or valid/expired now")
    listing.add_argument("--kind", choices=[k.value for k in CertificateKind])
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")

    expiring = pki.add_parser(
        "expiring",
        help="valid certificates expiring soon that have not been renewed",
        description="Lists valid, unrevoked certificates (CAs included) whose notAfter falls within the window "
        "and that have no renewal yet.",
    )
    ca_dir_arg(expiring)
    expiring.add_argument(
        "--within", type=duration_arg, default=duration_arg("30d"), help="window: Nd or Nh (default 30d)"
    )
    expiring.add_argument("--json", action="store_true", help="JSON instead of a table")

    inspect = pki.add_parser(
        "inspect",
        help="show a certificate, CSR or CRL (PEM or DER)",
        description="Subject, SANs, node identity, serial, validity, issuer, fingerprint. With --ca-dir: "
        "registry status and chain verification for a certificate, signature check for a CRL.",
    )
    inspect.add_argument("file", type=Path, metavar="FILE")
    ca_dir_arg(inspect, required=False)
    inspect.add_argument("--json", action="store_true", help="JSON instead of a table")

    quick = pki.add_parser(
        "quickstart",
        help="a throwaway CA with a hub certificate and node certificates, for trying Hutong out",
        description="Writes ca.pem, hub.pem/hub.key and nodes/<province>-<name>.pem/.key under DIR. "
        "Not for production: the CA key is stored unencrypted.",
    )
    quick.add_argument("directory", type=Path)
    quick.add_argument(
        "--node", action="append", required=True, metavar="PROVINCE/NAME", help="e.g. 440000/gz-01; repeatable"
    )

    ident = sub.add_parser("id", help="citizen ID number tools").add_subparsers(dest="id_command", required=True)
    check = ident.add_parser(
        "check",
        help="validate an ID number; on a bad check character, propose single-typo corrections",
        description="Validates a GB 11643 number (18 or 15 characters). Proposals are for a human to confirm "
        "against the person's documents; they are never applied automatically.",
    )
    check.add_argument("id_number")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hutong`` console command."""
    args = _parser().parse_args(argv)
    from gateway.logs import configure_logging

    try:
        configure_logging(args.log_level)
    except ValueError as exc:
        print(f"hutong: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _dispatch(args)
    except errors.HutongError as exc:
        print(f"hutong: {exc}", file=sys.stderr)
        if isinstance(exc, errors.ConfigError | errors.PkiError):
            return EXIT_CONFIG
        if isinstance(exc, errors.Unavailable | errors.StoreUnavailable):
            return EXIT_UNAVAILABLE
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from gateway.demo.run import run_demo

        return run_demo(
            data_dir=args.data_dir, persons_per_province=args.persons, seed=args.seed, console_port=args.console
        )
    if args.command == "hub":
        if args.hub_command == "jwks":
            from gateway.commands import print_jwks

            return print_jwks(args.data_dir)
        if args.hub_command in ("loop", "rules-check"):
            from gateway.loop_commands import hub_loop, rules_check

            if args.hub_command == "rules-check":
                return rules_check(args.file)
            from gateway.hub.ops_commands import hub_config

            return hub_loop(hub_config(args.config, data_dir=args.data_dir), as_json=args.json)
        if args.hub_command == "standards":
            from gateway.tier_commands import hub_standards

            return hub_standards(args.files, division=args.division, day=args.date, as_json=args.json)
        if args.hub_command == "tiers":
            from gateway.hub.ops_commands import hub_config
            from gateway.tier_commands import hub_tiers

            return hub_tiers(hub_config(args.config, data_dir=args.data_dir), as_json=args.json)
        if args.hub_command == "linkage":
            from gateway.linkage_commands import run_linkage

            return run_linkage(args)
        if args.hub_command == "console-token":
            from gateway.commands import issue_console_token

            return issue_console_token(args.data_dir, subject=args.subject, roles=args.role, hours=args.hours)
        if args.hub_command == "rotate-token-key":
            from gateway.commands import rotate_token_key

            return rotate_token_key(args.data_dir, keep=args.keep)
        from gateway.hub.ops_commands import run_hub_ops

        return run_hub_ops(args)
    if args.command == "query":
        from gateway.commands import run_query

        return asyncio.run(
            run_query(
                args.query_command,
                hub=args.hub,
                id_number=args.id_number,
                purpose=_PURPOSES[args.purpose],
                programs=[_PROGRAMS[p] for p in args.program or ()] if args.query_command == "check" else [],
                tls=_tls(args),
                server_name=args.server_name,
                province_code=getattr(args, "province", ""),
                as_json=getattr(args, "json", False),
            )
        )
    if args.command == "audit":
        return _audit(args)
    if args.command == "verify":
        from gateway.domain.model import Purpose
        from gateway.verify_commands import get_verification, request_verification

        if args.verify_command == "get":
            return asyncio.run(
                get_verification(
                    hub=args.hub,
                    tls=_tls(args),
                    server_name=args.server_name,
                    verification_id=args.verification_id,
                    as_json=args.json,
                )
            )
        return asyncio.run(
            request_verification(
                hub=args.hub,
                tls=_tls(args),
                server_name=args.server_name,
                members=args.member,
                consent_id=args.consent_id,
                consent_file=args.consent_file,
                consent_sha256=args.consent_sha256,
                consent_date=args.consent_date,
                purpose=Purpose(_PURPOSES[args.purpose]),
                classes=args.classes,
                request_id=args.request_id,
                wait=args.wait,
                as_json=args.json,
            )
        )
    if args.command == "signals":
        from gateway.loop_commands import submit_signals

        return submit_signals(args.file, hub=args.hub, tls=_tls(args), server_name=args.server_name)
    if args.command == "node":
        if args.node_command == "serve":
            from gateway.node.serve import serve_command

            return serve_command(args.config, port_file=args.port_file)
        from gateway.node.commands import run_node

        return run_node(args)
    if args.command == "adapt":
        from adapters.commands import adapt_command, profile_lint

        if args.files[0] == "profile-lint":
            if len(args.files) != 2:
                raise errors.ConfigError("usage: hutong adapt profile-lint PROFILE", reason="USAGE", field="profile")
            return profile_lint(Path(args.files[1]))
        if args.profile is None:
            raise errors.ConfigError("--profile is required", reason="PROFILE_MISSING", field="profile")
        files = [Path(f) for f in args.files]
        return adapt_command(
            args.profile, files, out=args.out, rejects=args.rejects, check=args.check, households=args.households
        )
    if args.command == "pki":
        if args.pki_command == "quickstart":
            from gateway.commands import pki_quickstart

            return pki_quickstart(args.directory, args.node)
        from gateway.pki_commands import run_pki

        return run_pki(args)
    if args.command == "id":
        from gateway.commands import id_check

        return id_check(args.id_number)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _audit(args: argparse.Namespace) -> int:
    from gateway import audit_commands as ac

    command = args.audit_command
    if command == "export":
        from gateway.hub.ops_commands import hub_config

        return ac.audit_export(
            hub_config(args.config, data_dir=args.data_dir), args.out, segment_size=args.segment_size
        )
    if command == "verify":
        return ac.audit_verify(
            args.directory,
            ca=args.ca,
            verifier_key=args.verifier_key,
            known=args.known,
            check_entries=args.check_entries,
        )
    if command == "show":
        try:
            person_key = bytes.fromhex(args.person_key)
        except ValueError:
            raise errors.ConfigError(
                "--person-key must be hex", reason="PERSON_KEY_INVALID", field="person_key"
            ) from None
        from gateway.store.base import AuditFilter

        filt = AuditFilter(
            since_us=ac.parse_time(args.since) if args.since else 0,
            until_us=ac.parse_time(args.until) if args.until else 0,
            province=args.province,
            method=args.method,
            purpose=args.purpose,
            person_key=person_key,
        )
        tls = _tls(args) if args.hub else None
        return asyncio.run(
            ac.audit_show(
                filt, limit=args.limit, export=args.export, hub=args.hub, tls=tls, server_name=args.server_name
            )
        )
    if command == "prove":
        return asyncio.run(ac.audit_prove(args.entry, hub=args.hub, tls=_tls(args), server_name=args.server_name))
    return asyncio.run(
        ac.audit_watch(
            args.state, hub=args.hub, tls=_tls(args), server_name=args.server_name, interval=args.interval, rounds=None
        )
    )


def _tls(args: argparse.Namespace) -> TlsMaterial:
    missing = [name for name in ("cert", "key", "ca") if getattr(args, name) is None]
    if missing:
        raise errors.ConfigError(
            "mTLS needs --cert, --key and --ca; missing: " + ", ".join("--" + m for m in missing),
            reason="TLS_MISSING",
            field=missing[0],
        )
    return TlsMaterial.from_files(args.cert, args.key, args.ca)


if __name__ == "__main__":
    sys.exit(main())
