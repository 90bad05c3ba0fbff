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
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _add_tls(p: argparse.ArgumentParser, who: str) -> None:
    g = p.add_argument_group("mTLS", f"the {who}'s certificate and key, and the ministry CA certificate")
    g.add_argument("--cert", type=Path, help=f"PEM certificate (chain) of the {who}")
    g.add_argument("--key", type=Path, help=f"PEM private key of the {who} (mode 0600)")
    g.add_argument("--ca", type=Path, help="PEM certificate of the ministry CA")


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
        "resends a batch to show idempotency, asks cross-province questions and prints a summary.",
    )
    demo.add_argument(
        "--data-dir", type=Path, help="where to keep the hub's data and certificates (default: a temp dir)"
    )
    demo.add_argument("--persons", type=int, default=20_000, help="persons per province (default: 20000)")
    demo.add_argument("--seed", type=int, default=20261130, help="seed of the synthetic population")

    hub = sub.add_parser("hub", help="run and manage the ministry hub").add_subparsers(
        dest="hub_command", required=True
    )
    serve = hub.add_parser(
        "serve",
        help="serve the hub's gRPC API over mTLS",
        description="Serves RecordExchangeService and AssistanceQueryService, gRPC health and reflection. "
        "Client certificates must chain to --ca and carry a hutong://province/<code>/node/<name> URI.",
    )
    serve.add_argument("--data-dir", type=Path, required=True, help="directory of the SQLite database and key file")
    serve.add_argument(
        "--listen",
        type=_split_listen,
        default=("127.0.0.1", 7443),
        help="HOST:PORT (default 127.0.0.1:7443; port 0 picks one)",
    )
    _add_tls(serve, "hub")
    serve.add_argument(
        "--insecure", action="store_true", help="plaintext on loopback for debugging; callers name themselves"
    )
    serve.add_argument("--port-file", type=Path, help="write the bound port here once serving")
    serve.add_argument(
        "--crypto-suite",
        choices=("intl", "sm"),
        help="intl (HMAC-SHA-256, AES-256-GCM) or sm (HMAC-SM3, SM4-GCM) for person keys and sealed fields;"
        " fixed when the data directory is created (default there: intl)",
    )
    serve.add_argument(
        "--policy", type=Path, help="access policy (TOML): scopes per node, purposes per scope, rate limits"
    )
    serve.add_argument(
        "--crl", type=Path, help="the CA's CRL (PEM or DER); checked on every call, reloaded when the file changes"
    )
    serve.add_argument("--max-batch", type=int, default=5000, help="largest batch accepted (default 5000)")
    serve.add_argument("--grace", type=float, default=10.0, help="seconds open calls get on shutdown (default 10)")

    query = sub.add_parser("query", help="ask the hub cross-province questions").add_subparsers(
        dest="query_command", required=True
    )
    for name, text in (
        ("check", "is this person enrolled anywhere? (yes/no per programme, holding provinces)"),
        ("lookup", "the person's enrollments across provinces, fields filtered by purpose"),
    ):
        q = query.add_parser(name, help=text, description=text)
        q.add_argument("--hub", required=True, help="HOST:PORT of the hub")
        q.add_argument("--id", dest="id_number", required=True, help="citizen ID number (18 or 15 characters)")
        q.add_argument("--purpose", required=True, choices=sorted(_PURPOSES), help="why you ask (recorded)")
        if name == "check":
            q.add_argument("--program", action="append", choices=sorted(_PROGRAMS), help="repeatable; default all")
        q.add_argument("--server-name", help="name to verify in the hub's certificate, if not the --hub host")
        _add_tls(q, "node")

    pki = sub.add_parser("pki", help="certificates (full operator tooling arrives with the PKI issue)").add_subparsers(
        dest="pki_command", required=True
    )
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
        if isinstance(exc, errors.Unavailable):
            return EXIT_UNAVAILABLE
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from gateway.demo.run import run_demo

        return run_demo(data_dir=args.data_dir, persons_per_province=args.persons, seed=args.seed)
    if args.command == "hub":
        return _hub_serve(args)
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
            )
        )
    if args.command == "pki":
        from gateway.commands import pki_quickstart

        return pki_quickstart(args.directory, args.node)
    if args.command == "id":
        from gateway.commands import id_check

        return id_check(args.id_number)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _tls(args: argparse.Namespace) -> TlsMaterial:
    missing = [name for name in ("cert", "key", "ca") if getattr(args, name) is None]
    if missing:
        raise errors.ConfigError(
            "mTLS needs --cert, --key and --ca; missing: " + ", ".join("--" + m for m in missing),
            reason="TLS_MISSING",
            field=missing[0],
        )
    return TlsMaterial.from_files(args.cert, args.key, args.ca)


def _hub_serve(args: argparse.Namespace) -> int:
    from gateway.hub.server import HubSettings, load_policy, serve_forever

    host, port = args.listen
    tls = None if args.insecure else _tls(args)
    settings = HubSettings(
        data_dir=args.data_dir,
        host=host,
        port=port,
        tls=tls,
        insecure=args.insecure,
        max_batch_items=args.max_batch,
        crl_path=args.crl,
        crypto_suite=args.crypto_suite,
        policy=load_policy(args.policy) if args.policy else None,
        grace_seconds=args.grace,
    )
    asyncio.run(serve_forever(settings, port_file=args.port_file))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
