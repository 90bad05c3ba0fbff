"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing, proofs and their verification.

The exchange log is a Merkle tree over audit entries, hashed exactly as RFC 9162 section 2.1:

* ``leaf_hash(e) = H(0x00 || e)`` and ``node_hash(l, r) = H(0x01 || l || r)``; the prefixes keep
  a leaf from ever being passed off as an interior node (second-preimage resistance).
* ``MTH({}) = H("")``; a tree of ``n > 1`` leaves is split at ``k``, the largest power of two
  below ``n``: ``MTH(D[n]) = node_hash(MTH(D[0:k]), MTH(D[k:n]))``.

``H`` is pluggable (``hash_fn``), so a hub on the ``sm`` crypto suite hashes with SM3
(``gateway.domain.protection.suite_hash("sm")``); the default is SHA-256.

Proofs are built from a *subtree hash source* — a function giving ``MTH(D[start:end])`` — so a
store that keeps interior hashes can answer without loading every leaf; the ``*_proof``
functions take a plain sequence of leaf hashes. Verification follows the bit-twiddling
algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2, which need only sizes, the proof and the
roots. **Verifiers return None and raise** :class:`ProofInvalid` naming what failed, so an
offline check can report why, not just that, a proof was rejected.

:class:`MerkleAccumulator` appends leaf hashes keeping only the roots of the perfect subtrees
that make up ``[0, n)`` — at most ``log2(n) + 1`` hashes (Trillian's "compact range") — and
yields the root at any size, so a hub never needs every leaf in memory to know its root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from gateway.audit.errors import ProofInvalid, TreeRangeInvalid

__all__ = [
    "HashFn",
    "MerkleAccumulator",
    "SubtreeHash",
    "consistency_path",
    "consistency_proof",
    "empty_root",
    "inclusion_path",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "sha256",
    "verify_consistency",
    "verify_inclusion",
]

#: A hash function of bytes (SHA-256, SM3, ...).
HashFn = Callable[[bytes], bytes]
#: ``subtree(start, end)`` gives ``MTH(D[start:end])`` of the tree being proved.
SubtreeHash = Callable[[int, int], bytes]

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``: the default tree hash (RFC 9162)."""
    return hashlib.sha256(data).digest()


def leaf_hash(entry: bytes, hash_fn: HashFn = sha256) -> bytes:
    """The hash of one leaf: ``H(0x00 || entry)``."""
    return hash_fn(_LEAF_PREFIX + entry)


def node_hash(left: bytes, right: bytes, hash_fn: HashFn = sha256) -> bytes:
    """The hash of an interior node: ``H(0x01 || left || right)``."""
    return hash_fn(_NODE_PREFIX + left + right)


def empty_root(hash_fn: HashFn = sha256) -> bytes:
    """The root of the empty tree: ``H("")``."""
    return hash_fn(b"")


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes], hash_fn: HashFn = sha256) -> bytes:
    """``MTH`` of a tree given its leaf hashes (RFC 9162 section 2.1.1), for any size."""
    if not leaf_hashes:
        return empty_root(hash_fn)
    # Pairing level by level and carrying an odd last node up unchanged builds the same
    # left-balanced tree as the recursive split, without recursion or slicing.
    level = list(leaf_hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1], hash_fn) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def _check_size(size: int, available: int) -> None:
    if size < 0 or size > available:
        raise TreeRangeInvalid(
            f"tree size {size} is outside 0..{available}",
            metadata={"size": str(size), "available": str(available)},
        )


def inclusion_path(index: int, size: int, subtree: SubtreeHash) -> list[bytes]:
    """``PATH(index, D[0:size])`` of RFC 9162 section 2.1.3.1, bottom sibling first."""
    if size < 1 or not 0 <= index < size:
        raise TreeRangeInvalid(
            f"leaf index {index} is outside a tree of size {size}",
            metadata={"index": str(index), "size": str(size)},
        )
    siblings: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        mid = start + _split(end - start)
        if index < mid:
            siblings.append(subtree(mid, end))
            end = mid
        else:
            siblings.append(subtree(start, mid))
            start = mid
    siblings.reverse()
    return siblings


def consistency_path(old_size: int, new_size: int, subtree: SubtreeHash) -> list[bytes]:
    """``PROOF(old_size, D[0:new_size])`` of RFC 9162 section 2.1.4.1; empty if nothing to prove.

    A proof from the empty tree, or from a tree to itself, is empty.
    """
    if not 0 <= old_size <= new_size:
        raise TreeRangeInvalid(
            f"old size {old_size} is outside 0..{new_size}",
            metadata={"old_size": str(old_size), "new_size": str(new_size)},
        )
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[start:end], b) unrolled: each step records the sibling subtree it skips.
    proof: list[bytes] = []
    start, end, m = 0, new_size, old_size
    old_is_whole_subtree = True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            proof.append(subtree(start + k, end))
            end = start + k
        else:
            proof.append(subtree(start, start + k))
            start += k
            m -= k
            old_is_whole_subtree = False
    if not old_is_whole_subtree:
        proof.append(subtree(start, end))
    proof.reverse()
    return proof


def _leaf_subtree(leaf_hashes: Sequence[bytes], hash_fn: HashFn) -> SubtreeHash:
    def subtree(start: int, end: int) -> bytes:
        return root_hash(leaf_hashes[start:end], hash_fn)

    return subtree


def inclusion_proof(
    leaf_hashes: Sequence[bytes], index: int, size: int | None = None, hash_fn: HashFn = sha256
) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of the first ``size`` leaf hashes (default: all)."""
    size = len(leaf_hashes) if size is None else size
    _check_size(size, len(leaf_hashes))
    return inclusion_path(index, size, _leaf_subtree(leaf_hashes, hash_fn))


def consistency_proof(
    leaf_hashes: Sequence[bytes], old_size: int, new_size: int | None = None, hash_fn: HashFn = sha256
) -> list[bytes]:
    """The consistency proof between the trees of the first ``old_size`` and ``new_size`` leaf hashes."""
    new_size = len(leaf_hashes) if new_size is None else new_size
    _check_size(new_size, len(leaf_hashes))
    return consistency_path(old_size, new_size, _leaf_subtree(leaf_hashes, hash_fn))


def _mismatch(what: str, **context: int) -> ProofInvalid:
    return ProofInvalid(what, metadata={key: str(value) for key, value in context.items()})


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes, hash_fn: HashFn = sha256
) -> None:
    """Check that ``leaf`` (a leaf hash) sits at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2. Returns None; raises :class:`ProofInvalid` naming the failure.
    """
    if size < 1 or not 0 <= index < size:
        raise _mismatch(f"leaf index {index} is outside a tree of size {size}", index=index, size=size)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise _mismatch(
                f"inclusion proof for leaf {index} of {size} is too long ({len(proof)} hashes)",
                index=index,
                size=size,
                proof_length=len(proof),
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r, hash_fn)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p, hash_fn)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _mismatch(
            f"inclusion proof for leaf {index} of {size} is too short ({len(proof)} hashes)",
            index=index,
            size=size,
            proof_length=len(proof),
        )
    if r != root:
        raise _mismatch(f"inclusion proof for leaf {index} of {size} does not lead to the root", index=index, size=size)


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
    hash_fn: HashFn = sha256,
) -> None:
    """Check that the tree of ``new_size`` with ``new_root`` extends the one of ``old_size`` with ``old_root``.

    RFC 9162 section 2.1.4.2, plus the two cases it leaves out: from the empty tree (the old
    root must be ``H("")``) and from a tree to itself (the roots must be equal); both take an
    empty proof. Returns None; raises :class:`ProofInvalid` naming the failure.
    """
    sizes = {"old_size": old_size, "new_size": new_size}
    if not 0 <= old_size <= new_size:
        raise _mismatch(f"old size {old_size} is outside 0..{new_size}", **sizes)
    if old_size in (0, new_size):
        if proof:
            raise _mismatch(
                f"consistency proof from {old_size} to {new_size} must be empty", proof_length=len(proof), **sizes
            )
        if old_size == 0 and old_root != empty_root(hash_fn):
            raise _mismatch("old root is not the root of the empty tree", **sizes)
        if old_size == new_size and old_root != new_root:
            raise _mismatch(f"two different roots for the same tree size {old_size}", **sizes)
        return
    if not proof:
        raise _mismatch(f"consistency proof from {old_size} to {new_size} is empty", **sizes)
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a perfect subtree of the new one, so its root is the first node.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _mismatch(
                f"consistency proof from {old_size} to {new_size} is too long", proof_length=len(proof), **sizes
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr, hash_fn)
            sr = node_hash(c, sr, hash_fn)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c, hash_fn)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _mismatch(
            f"consistency proof from {old_size} to {new_size} is too short", proof_length=len(proof), **sizes
        )
    if fr != old_root:
        raise _mismatch(f"consistency proof does not lead to the old root at size {old_size}", **sizes)
    if sr != new_root:
        raise _mismatch(f"consistency proof does not lead to the new root at size {new_size}", **sizes)


class MerkleAccumulator:
    """An append-only Merkle tree that keeps only its compact range: O(log n) hashes.

    ``peaks`` are the roots of the perfect subtrees covering ``[0, size)``, largest (leftmost)
    first — one per set bit of ``size``. Persist ``size`` and ``peaks`` and rebuild with
    ``MerkleAccumulator(hash_fn, size=..., peaks=...)`` to resume after a restart.

    ``on_subtree(level, start, hash)``, if given, is called for every perfect subtree of
    ``2**level`` leaves (``level >= 1``) that an append completes, so a store can keep the
    interior hashes proofs need.
    """

    __slots__ = ("_hash_fn", "_on_subtree", "_peaks", "_size")

    def __init__(
        self,
        hash_fn: HashFn = sha256,
        *,
        size: int = 0,
        peaks: Iterable[bytes] = (),
        on_subtree: Callable[[int, int, bytes], None] | None = None,
    ) -> None:
        self._hash_fn = hash_fn
        self._on_subtree = on_subtree
        self._peaks = list(peaks)
        if size < 0 or len(self._peaks) != size.bit_count():
            raise TreeRangeInvalid(
                f"a tree of size {size} has {max(size, 0).bit_count()} peaks, not {len(self._peaks)}",
                metadata={"size": str(size), "peaks": str(len(self._peaks))},
            )
        self._size = size

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """The compact range: perfect-subtree roots covering every leaf, leftmost first."""
        return tuple(self._peaks)

    def append(self, leaf: bytes) -> int:
        """Append one leaf hash; return its index."""
        index = self._size
        self._peaks.append(leaf)
        self._size += 1
        # Each trailing zero bit of the new size closes one pair of equal perfect subtrees.
        carry = self._size
        level = 0
        while not carry & 1:
            right = self._peaks.pop()
            left = self._peaks.pop()
            merged = node_hash(left, right, self._hash_fn)
            self._peaks.append(merged)
            carry >>= 1
            level += 1
            if self._on_subtree is not None:
                self._on_subtree(level, self._size - (1 << level), merged)
        return index

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append many leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The root hash of the tree of every leaf appended so far."""
        if not self._peaks:
            return empty_root(self._hash_fn)
        root = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            root = node_hash(peak, root, self._hash_fn)
        return root

    def copy(self) -> MerkleAccumulator:
        """An independent accumulator in the same state (without the ``on_subtree`` hook)."""
        return MerkleAccumulator(self._hash_fn, size=self._size, peaks=self._peaks)
