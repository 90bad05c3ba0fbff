"""RFC 9162 Merkle hashing, proofs and verification against the CT vectors and a naive reference."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.errors import ProofInvalid, TreeRangeInvalid
from gateway.audit.merkle import (
    MerkleAccumulator,
    consistency_proof,
    empty_root,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from gateway.domain.protection import suite_hash

Hash = Callable[[bytes], bytes]


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---- a naive reference written straight from RFC 9162 section 2.1, on raw entries


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(entries: Sequence[bytes], h: Hash = _sha256) -> bytes:
    n = len(entries)
    if n == 0:
        return h(b"")
    if n == 1:
        return h(b"\x00" + entries[0])
    k = _k(n)
    return h(b"\x01" + ref_mth(entries[:k], h) + ref_mth(entries[k:], h))


def ref_path(m: int, entries: Sequence[bytes], h: Hash = _sha256) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, entries[:k], h), ref_mth(entries[k:], h)]
    return [*ref_path(m - k, entries[k:], h), ref_mth(entries[:k], h)]


def ref_subproof(m: int, entries: Sequence[bytes], b: bool, h: Hash = _sha256) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if b else [ref_mth(entries, h)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, entries[:k], b, h), ref_mth(entries[k:], h)]
    return [*ref_subproof(m - k, entries[k:], False, h), ref_mth(entries[:k], h)]


def ref_proof(m: int, entries: Sequence[bytes], h: Hash = _sha256) -> list[bytes]:
    return ref_subproof(m, entries, True, h)


# ---- Certificate Transparency reference test data (merkle_tree_test / Trillian testonly)

CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
CT_LEAF_HASHES = [leaf_hash(entry) for entry in CT_LEAVES]


def test_empty_tree_root_is_sha256_of_the_empty_string() -> None:
    assert root_hash([]).hex() == CT_ROOTS[0]
    assert empty_root().hex() == CT_ROOTS[0]


@pytest.mark.parametrize("size", range(1, 9))
def test_root_matches_the_ct_vector_at_every_size(size: int) -> None:
    assert root_hash(CT_LEAF_HASHES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_proof_matches_the_ct_vector(index: int, size: int) -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, index, size)
    assert [p.hex() for p in proof] == CT_INCLUSION[index, size]
    verify_inclusion(CT_LEAF_HASHES[index], index, size, proof, bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_consistency_proof_matches_the_ct_vector(old: int, new: int) -> None:
    proof = consistency_proof(CT_LEAF_HASHES, old, new)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[old, new]
    verify_consistency(old, new, bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new]), proof)


def test_leaf_and_node_hashes_use_the_domain_separation_prefixes() -> None:
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(b"L", b"R") == _sha256(b"\x01LR")


def test_proofs_equal_the_reference_for_every_index_and_pair_up_to_twenty_leaves() -> None:
    entries = [bytes([i]) * (i % 3) for i in range(20)]
    hashes = [leaf_hash(e) for e in entries]
    for n in range(1, len(entries) + 1):
        assert root_hash(hashes[:n]) == ref_mth(entries[:n])
        for i in range(n):
            assert inclusion_proof(hashes, i, n) == ref_path(i, entries[:n])
        for m in range(1, n + 1):
            assert consistency_proof(hashes, m, n) == ref_proof(m, entries[:n])


# Unique entries: with equal leaves a proof may honestly hold at a mirrored index.
trees = st.lists(st.binary(max_size=6), min_size=1, max_size=70, unique=True)


@settings(max_examples=25, deadline=None)
@given(entries=trees, data=st.data())
def test_every_inclusion_proof_verifies_and_tampering_fails(entries: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(e) for e in entries]
    n = len(hashes)
    root = root_hash(hashes)
    assert root == ref_mth(entries)
    for i in range(n):
        proof = inclusion_proof(hashes, i)
        verify_inclusion(hashes[i], i, n, proof, root)
        with pytest.raises(ProofInvalid):
            verify_inclusion(leaf_hash(entries[i] + b"!"), i, n, proof, root)
        with pytest.raises(ProofInvalid):
            verify_inclusion(hashes[i], i, n, proof, _sha256(root))
        if n > 1:
            other = data.draw(st.integers(0, n - 1).filter(lambda j, i=i: j != i))
            with pytest.raises(ProofInvalid):
                verify_inclusion(hashes[i], other, n, proof, root)


@settings(max_examples=20, deadline=None)
@given(entries=trees)
def test_every_consistency_proof_verifies_and_a_tampered_root_fails(entries: list[bytes]) -> None:
    hashes = [leaf_hash(e) for e in entries]
    acc = MerkleAccumulator()
    roots = [acc.root()]
    for h in hashes:
        acc.append(h)
        roots.append(acc.root())
    n_max = len(hashes)
    for n in range(1, n_max + 1):
        for m in range(0, n + 1):
            proof = consistency_proof(hashes, m, n)
            verify_consistency(m, n, roots[m], roots[n], proof)
            with pytest.raises(ProofInvalid):
                verify_consistency(m, n, _sha256(roots[m]), roots[n], proof)
            if m != 0:
                with pytest.raises(ProofInvalid):
                    verify_consistency(m, n, roots[m], _sha256(roots[n]), proof)


@settings(max_examples=50, deadline=None)
@given(entries=st.lists(st.binary(max_size=4), max_size=70))
def test_accumulator_root_equals_root_hash_at_every_size(entries: list[bytes]) -> None:
    hashes = [leaf_hash(e) for e in entries]
    acc = MerkleAccumulator()
    assert acc.root() == root_hash([])
    for n, h in enumerate(hashes, start=1):
        assert acc.append(h) == n - 1
        assert acc.size == n
        assert len(acc.peaks) == n.bit_count()
        assert acc.root() == root_hash(hashes[:n])


def test_accumulator_resumes_from_its_size_and_peaks() -> None:
    hashes = CT_LEAF_HASHES * 3
    first = MerkleAccumulator()
    first.extend(hashes[:13])
    resumed = MerkleAccumulator(size=first.size, peaks=first.peaks)
    resumed.extend(hashes[13:])
    assert resumed.root() == root_hash(hashes)
    assert first.root() == root_hash(hashes[:13])


def test_accumulator_copy_is_independent() -> None:
    acc = MerkleAccumulator()
    acc.extend(CT_LEAF_HASHES[:3])
    snapshot = acc.copy()
    acc.append(CT_LEAF_HASHES[3])
    assert snapshot.root().hex() == CT_ROOTS[3]
    assert acc.root().hex() == CT_ROOTS[4]


def test_accumulator_refuses_peaks_that_do_not_fit_the_size() -> None:
    with pytest.raises(TreeRangeInvalid):
        MerkleAccumulator(size=3, peaks=[b"x"])
    with pytest.raises(TreeRangeInvalid):
        MerkleAccumulator(size=-1)


def test_sm3_hash_plugs_into_roots_proofs_and_the_accumulator() -> None:
    sm3 = suite_hash("sm")
    entries = CT_LEAVES[:7]
    hashes = [leaf_hash(e, sm3) for e in entries]
    root = root_hash(hashes, sm3)
    assert root == ref_mth(entries, sm3)
    assert root != root_hash([leaf_hash(e) for e in entries])
    assert empty_root(sm3) == sm3(b"")
    acc = MerkleAccumulator(sm3)
    acc.extend(hashes)
    assert acc.root() == root
    proof = inclusion_proof(hashes, 4, hash_fn=sm3)
    assert proof == ref_path(4, entries, sm3)
    verify_inclusion(hashes[4], 4, 7, proof, root, sm3)
    with pytest.raises(ProofInvalid):
        verify_inclusion(hashes[4], 4, 7, proof, root)
    old_root = root_hash(hashes[:3], sm3)
    cproof = consistency_proof(hashes, 3, hash_fn=sm3)
    assert cproof == ref_proof(3, entries, sm3)
    verify_consistency(3, 7, old_root, root, cproof, sm3)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (8, 8), (-1, 8), (0, 9)])
def test_inclusion_proof_refuses_an_index_or_size_outside_the_tree(index: int, size: int) -> None:
    with pytest.raises(TreeRangeInvalid):
        inclusion_proof(CT_LEAF_HASHES, index, size)


@pytest.mark.parametrize(("old", "new"), [(5, 4), (-1, 4), (1, 9)])
def test_consistency_proof_refuses_sizes_outside_the_tree(old: int, new: int) -> None:
    with pytest.raises(TreeRangeInvalid):
        consistency_proof(CT_LEAF_HASHES, old, new)


def test_inclusion_verification_rejects_a_proof_with_a_hash_too_many_or_too_few() -> None:
    root = bytes.fromhex(CT_ROOTS[8])
    proof = inclusion_proof(CT_LEAF_HASHES, 5)
    with pytest.raises(ProofInvalid, match="too long"):
        verify_inclusion(CT_LEAF_HASHES[5], 5, 8, [*proof, proof[0]], root)
    with pytest.raises(ProofInvalid, match="too short"):
        verify_inclusion(CT_LEAF_HASHES[5], 5, 8, proof[:-1], root)
    with pytest.raises(ProofInvalid, match="outside"):
        verify_inclusion(CT_LEAF_HASHES[5], 8, 8, proof, root)


def test_inclusion_verification_rejects_a_proof_for_another_tree_size() -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, 2, 7)
    with pytest.raises(ProofInvalid):
        verify_inclusion(CT_LEAF_HASHES[2], 2, 8, proof, bytes.fromhex(CT_ROOTS[8]))


def test_consistency_verification_covers_the_trivial_cases() -> None:
    r3, r8 = bytes.fromhex(CT_ROOTS[3]), bytes.fromhex(CT_ROOTS[8])
    verify_consistency(0, 8, empty_root(), r8, [])
    verify_consistency(8, 8, r8, r8, [])
    with pytest.raises(ProofInvalid, match="empty tree"):
        verify_consistency(0, 8, r3, r8, [])
    with pytest.raises(ProofInvalid, match="same tree size"):
        verify_consistency(8, 8, r8, r3, [])
    with pytest.raises(ProofInvalid, match="must be empty"):
        verify_consistency(8, 8, r8, r8, [r3])
    with pytest.raises(ProofInvalid, match="is empty"):
        verify_consistency(3, 8, r3, r8, [])
    with pytest.raises(ProofInvalid, match="outside"):
        verify_consistency(9, 8, r3, r8, [r3])


def test_consistency_verification_rejects_a_proof_with_a_hash_too_many_or_too_few() -> None:
    r6, r8 = bytes.fromhex(CT_ROOTS[6]), bytes.fromhex(CT_ROOTS[8])
    proof = consistency_proof(CT_LEAF_HASHES, 6)
    with pytest.raises(ProofInvalid, match="too long"):
        verify_consistency(6, 8, r6, r8, [*proof, proof[0]])
    with pytest.raises(ProofInvalid, match="too short"):
        verify_consistency(6, 8, r6, r8, proof[:-1])


def test_a_rewritten_history_fails_consistency_with_the_old_root() -> None:
    old_root = root_hash(CT_LEAF_HASHES[:5])
    rewritten = [*CT_LEAF_HASHES[:2], leaf_hash(b"forged"), *CT_LEAF_HASHES[3:]]
    proof = consistency_proof(rewritten, 5)
    with pytest.raises(ProofInvalid, match="old root"):
        verify_consistency(5, 8, old_root, root_hash(rewritten), proof)


def test_accumulator_reports_every_completed_perfect_subtree() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(37)]
    seen: list[tuple[int, int, bytes]] = []
    acc = MerkleAccumulator(on_subtree=lambda level, start, h: seen.append((level, start, h)))
    acc.extend(leaves)
    expected = [
        (level, start, root_hash(leaves[start : start + (1 << level)]))
        for end in range(1, 38)
        for level in range(1, 6)
        if end % (1 << level) == 0
        for start in [end - (1 << level)]
    ]
    assert seen == expected
    assert len(seen) == 37 - (37).bit_count()
