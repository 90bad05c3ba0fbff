"""The node's databases hold the export's records and the province's items in clear: 0600 (THREAT_MODEL G9)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.node.inbox import Inbox
from gateway.node.outbox import Outbox
from gateway.node.verification import ItemIndex

pytestmark = pytest.mark.usefixtures("loose_umask")


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_outbox_is_created_private_with_its_wal(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "node" / "outbox.sqlite")
    try:
        assert _private(tmp_path / "node" / "outbox.sqlite")
        assert _private(tmp_path / "node" / "outbox.sqlite-wal")
    finally:
        outbox.close()


def test_the_inbox_is_created_private(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "inbox.sqlite")
    try:
        assert _private(tmp_path / "inbox.sqlite")
    finally:
        inbox.close()


def test_the_verification_index_is_created_private(tmp_path: Path) -> None:
    index = ItemIndex.open(tmp_path / "verification.sqlite")
    try:
        assert _private(tmp_path / "verification.sqlite")
    finally:
        index.close()
