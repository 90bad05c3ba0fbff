"""Fuzzing of every parser of untrusted input: coverage-guided (atheris) targets, a live-hub fuzzer, a runner.

The contract every target checks: a parser given bad input raises one of the project's errors
(:class:`gateway.errors.HutongError` and its subclasses) or returns a result; any other exception
(KeyError, IndexError, UnicodeDecodeError, RecursionError, a ValueError leaking...), a broken
invariant, or a hang is a bug.

* :mod:`fuzz.targets` — one check function per parser, ``check(data: bytes) -> None``; it needs no
  atheris, so ``tests/unit/test_fuzz_regressions.py`` replays saved inputs through it;
* :mod:`fuzz.live_server` — random and mutated request bodies through a real hub, over gRPC;
* :mod:`fuzz.run` — every target for a bounded number of inputs, from ``fuzz/corpus/<target>/``;
  a crashing input is saved to ``fuzz/crashes/<target>/``, and once triaged it is kept in
  ``fuzz/regressions/<target>/``;
* :mod:`fuzz.seeds` — (re)writes the seed corpora from the repository's samples and examples.
"""
