"""Tiered identification (分层分类), the hub's side: who is in which tier, kept current, and pushed.

The hub runs with a tier rule set (``tiers.rules``, :mod:`gateway.domain.tiers`) and the local
standards the provinces publish (``tiers.standards``, :mod:`gateway.domain.standards`). Each
person holding a live record is decided from the programmes they are actively enrolled in (in
any province), the household income their newest record's household declares, and the standards
in force at that household's residence today. The decision and its evidence are stored
(``tiers``); the evidence reproduces it (``gateway.domain.tiers.reproduce``).

**Kept current.** Whatever changes a person — a batch's records and households, a retirement, a
linkage decision — marks them in the same transaction (``tier_dirty``); this task takes the
marks in chunks, decides, and stores the decisions. At start and at each new day it compares what
the stored decisions were made under: a new rule set (another digest) marks everyone; a new
registry, or a version of a standard taking effect, marks the residents of the divisions whose
value in force changed (``gateway.domain.tiers.affected``). The rule set's and registry's texts are
kept by digest (``tier_inputs``) and each new one is an entry of the exchange log
(``/hutong.hub.Operator/LoadTierRules``, ``LoadStandards``).

**Pushed.** A person whose tier changes (into a tier, out of every tier, or to another) is an
event ``TIER_CHANGED`` (tier and previous tier) to every province holding a live record of them,
written with the decision; each chunk that changed someone is an entry of the exchange log
(``/hutong.hub.Tierer/DecideTiers``) with the changed persons' keys.

Households carry no urban/rural area and no rigid expenditure yet: the rules' ``unknown_area``
decides which dibao line applies (recorded as an assumption in the evidence), and conditions on
rigid expenditure do not hold. Several replicas may decide the same persons at once: decisions are
deterministic and events idempotent per decision, so nothing is pushed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import time

import structlog

from gateway.domain.standards import StandardsRegistry
from gateway.domain.tiers import Area, PersonFacts, TierRules, affected, evaluate
from gateway.domain.verification import today_in_china
from gateway.errors import HutongError
from gateway.hub.audit import AuditRecorder
from gateway.hub.interceptors import CallInfo
from gateway.store.sql import SqlStore
from gateway.store.tiers import Decided, PersonInputs, StoredTier

__all__ = ["Tierer"]

log = structlog.get_logger("hutong.hub")


class Tierer:
    """Decides tiers as persons change; re-tiers when the rules, the standards or the day change."""

    def __init__(
        self,
        store: SqlStore,
        rules: TierRules,
        standards: StandardsRegistry,
        audit: AuditRecorder,
        *,
        interval: float = 5.0,
        chunk: int = 2000,
    ) -> None:
        self._store = store
        self.rules = rules
        self.standards = standards
        self._audit = audit
        self._interval = interval
        self._chunk = chunk
        self._day: dt.date | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Mark who must be decided under what the hub runs with now, then decide in the background."""
        self._store.tiering = True
        await self.prepare(today_in_china())
        self._task = asyncio.create_task(self._loop(), name="tiering", context=contextvars.Context())

    async def stop(self) -> None:
        """Stop deciding; the marks stay for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def prepare(self, day: dt.date) -> None:
        """Keep the inputs, and mark whom the rules, the standards or the day change for."""
        rules, standards = self.rules, self.standards
        before, old_text, rules_new, standards_new = await self._store.tier_inputs_loaded(
            rules=(rules.digest, rules.version, rules.canonical()),
            standards=(standards.digest, standards.canonical()),
        )
        for new, method, counts in (
            (rules_new, "LoadTierRules", {"tiers": len(rules.tiers)}),
            (standards_new, "LoadStandards", {"values": len(standards)}),
        ):
            if new:
                digest = rules.digest if method == "LoadTierRules" else standards.digest
                call = CallInfo(
                    method=method,
                    request_id=digest.hex()[:32],
                    started=time.perf_counter(),
                    full_method=f"/hutong.hub.Operator/{method}",
                    subject="hub-operator",
                    counts=counts,
                )
                text = rules.canonical() if method == "LoadTierRules" else standards.canonical()
                await self._audit.record(call, text.encode(), None)
        everyone = before is None or before[0] != rules.digest
        prefixes: set[str] = set()
        if not everyone and before is not None:
            old_day = dt.date.fromisoformat(before[2])
            if old_text is None:
                everyone = True  # the registry decisions were made under is gone: decide again
            elif before[1] != standards.digest or old_day != day:
                old = StandardsRegistry.from_canonical(old_text)
                prefixes = {prefix for prefix, _ in affected(old, standards, day, rules=rules, old_day=old_day)}
        if everyone or prefixes or before is None or before[2] != day.isoformat():
            await self._store.tier_remark(
                everyone=everyone,
                prefixes=prefixes,
                rules_digest=rules.digest,
                standards_digest=standards.digest,
                day=day.isoformat(),
            )
            log.info(
                "tiers_remarked",
                everyone=everyone,
                prefixes=sorted(prefixes),
                rules_version=rules.version,
                day=day.isoformat(),
            )
        self._day = day

    async def run_once(self) -> int:
        """Decide one chunk of marked persons; how many were decided."""
        day = self._day or today_in_china()
        marks, inputs, stored = await self._store.tier_work(self._chunk)
        if not marks:
            return 0
        decided: list[Decided] = []
        forgotten: list[bytes] = []
        for key, _ in marks:
            held = inputs.get(key)
            if held is None:
                forgotten.append(key)  # no live record: no tier, nobody to tell
                continue
            decided.append(self._decide(held, stored.get(key), day))
        await self._store.tier_decided(
            marks,
            decided,
            forgotten,
            rules_digest=self.rules.digest,
            standards_digest=self.standards.digest,
            day=day.isoformat(),
        )
        changed = [d for d in decided if d.changed]
        if changed:
            call = CallInfo(
                method="DecideTiers",
                request_id=f"tiers-{time.time_ns()}",
                started=time.perf_counter(),
                full_method="/hutong.hub.Tierer/DecideTiers",
                subject="hub",
                counts={"decided": len(decided), "changed": len(changed), "forgotten": len(forgotten)},
                person_keys={d.person_key for d in changed},
            )
            await self._audit.record(call, b"".join(d.evidence_digest for d in changed), None)
            log.info("tiers_decided", decided=len(decided), changed=len(changed), forgotten=len(forgotten))
        return len(marks)

    def _decide(self, held: PersonInputs, stored: StoredTier | None, day: dt.date) -> Decided:
        facts = PersonFacts(
            person_key=held.person_key,
            province=held.province[:2] + "0000",
            residence_division=held.residence_division,
            area=Area.UNKNOWN,
            active_programs=held.active_programs,
            income_per_member_fen=held.income_per_member_fen,
            rigid_expenditure_fen=-1,
            members=held.members,
        )
        decision = evaluate(self.rules, self.standards, facts, day)
        tier = decision.tier or ""
        previous = stored.tier if stored is not None else ""
        return Decided(
            person_key=held.person_key,
            province=held.province,
            residence_division=held.residence_division,
            tier=tier,
            previous_tier=previous,
            evidence=decision.canonical_evidence(),
            evidence_digest=decision.evidence_digest,
            summary=decision.summary(),
            changed=tier != previous,
            records=held.records,
        )

    async def _loop(self) -> None:
        while True:
            try:
                today = today_in_china()
                if today != self._day:
                    await self.prepare(today)
                decided = await self.run_once()
            except HutongError as exc:
                log.warning("tiering_failed", reason=exc.reason, error=str(exc))
                decided = 0
            except Exception:
                log.exception("tiering_crashed")
                decided = 0
            if decided < self._chunk:
                await asyncio.sleep(self._interval)

    async def settle(self) -> None:
        """Decide until nobody is marked (tests; an operator's command on a quiet hub)."""
        while await self.run_once():
            pass
