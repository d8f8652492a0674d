#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! RFC 6962 hashing and proofs: published test vectors and properties.

use llmkg_governance::audit::merkle::{
    Hash, ProofError, empty_root, leaf_hash, tree_consistency_proof, tree_inclusion_proof,
    tree_root, verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

fn hex(s: &str) -> Hash {
    let v: Vec<u8> =
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    v.try_into().unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

// Test vectors: the standard eight leaves and their tree hashes, from
// github.com/transparency-dev/merkle, testonly/constants.go (LeafInputs, NodeHashes,
// RootHashes) and testdata/{inclusion,consistency}/*/happy-path.json.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

const LEAF_HASHES: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
];

// (leaf index, tree size, proof)
const INCLUSION: &[(u64, u64, &[&str])] = &[
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

// (old size, new size, proof)
const CONSISTENCY: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn vector_leaves() -> Vec<Hash> {
    LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
}

#[test]
fn leaf_hashes_and_roots_match_the_published_vectors() {
    assert_eq!(empty_root(), hex(ROOTS[0]));
    let leaves = vector_leaves();
    for (got, want) in leaves.iter().zip(LEAF_HASHES) {
        assert_eq!(*got, hex(want));
    }
    for (size, want) in ROOTS.iter().enumerate() {
        assert_eq!(tree_root(&leaves[..size]), hex(want), "root of size {size}");
    }
}

#[test]
fn inclusion_proofs_match_the_published_vectors() {
    let leaves = vector_leaves();
    for &(index, size, proof) in INCLUSION {
        let proof: Vec<Hash> = proof.iter().map(|h| hex(h)).collect();
        let ours = tree_inclusion_proof(&leaves[..size as usize], index).unwrap();
        assert_eq!(ours, proof, "inclusion {index} in {size}");
        let root = hex(ROOTS[size as usize]);
        verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
    }
}

#[test]
fn consistency_proofs_match_the_published_vectors() {
    let leaves = vector_leaves();
    for &(old, new, proof) in CONSISTENCY {
        let proof: Vec<Hash> = proof.iter().map(|h| hex(h)).collect();
        let ours = tree_consistency_proof(&leaves[..new as usize], old).unwrap();
        assert_eq!(ours, proof, "consistency {old} -> {new}");
        verify_consistency(old, new, &hex(ROOTS[old as usize]), &hex(ROOTS[new as usize]), &proof)
            .unwrap();
    }
}

#[test]
fn impossible_parameters_are_typed_errors() {
    let leaves = vector_leaves();
    let root = tree_root(&leaves);
    assert_eq!(
        verify_inclusion(&leaves[0], 8, 8, &[], &root),
        Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
    );
    assert_eq!(
        verify_inclusion(&leaves[0], 0, 0, &[], &root),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        verify_consistency(5, 4, &root, &root, &[]),
        Err(ProofError::SizesOutOfOrder { old: 5, new: 4 })
    );
    // The empty tree is a prefix of every tree, with an empty proof.
    verify_consistency(0, 8, &empty_root(), &root, &[]).unwrap();
    assert!(verify_consistency(0, 8, &root, &root, &[]).is_err());
    // A proof too long for the sizes.
    let mut proof = tree_inclusion_proof(&leaves, 3).unwrap();
    proof.push(root);
    assert!(matches!(
        verify_inclusion(&leaves[3], 3, 8, &proof, &root),
        Err(ProofError::WrongLength { .. })
    ));
    let huge = vec![root; 10_000];
    assert!(verify_inclusion(&leaves[3], 3, 8, &huge, &root).is_err());
    assert!(verify_consistency(3, 8, &root, &root, &huge).is_err());
    // Equal sizes with different roots.
    assert_eq!(verify_consistency(8, 8, &leaves[0], &root, &[]), Err(ProofError::RootMismatch));
}

fn leaves_of(n: usize, seed: u8) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&[seed, (i >> 8) as u8, i as u8])).collect()
}

fn flip(h: &mut Hash, byte: usize, bit: u8) {
    h[byte % 32] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn inclusion_proofs_verify_for_every_leaf_and_fail_when_tampered(
        size in 1usize..70, seed: u8, byte in 0usize..32, bit in 0u8..8, which: usize,
    ) {
        let leaves = leaves_of(size, seed);
        let root = tree_root(&leaves);
        for index in 0..size {
            let proof = tree_inclusion_proof(&leaves, index as u64).unwrap();
            prop_assert!(proof.len() <= 7);
            verify_inclusion(&leaves[index], index as u64, size as u64, &proof, &root).unwrap();
            // A flipped bit in the leaf, the root or any proof hash fails.
            let mut leaf = leaves[index];
            flip(&mut leaf, byte, bit);
            prop_assert!(verify_inclusion(&leaf, index as u64, size as u64, &proof, &root).is_err());
            let mut bad_root = root;
            flip(&mut bad_root, byte, bit);
            prop_assert!(verify_inclusion(&leaves[index], index as u64, size as u64, &proof, &bad_root).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = which % bad.len();
                flip(&mut bad[k], byte, bit);
                prop_assert!(verify_inclusion(&leaves[index], index as u64, size as u64, &bad, &root).is_err());
                // Dropping a hash fails too.
                prop_assert!(verify_inclusion(&leaves[index], index as u64, size as u64, &proof[1..], &root).is_err());
            }
            // The wrong index fails (unless the proof happens to fit it: never for distinct leaves).
            if size > 1 {
                let other = (index + 1) % size;
                prop_assert!(verify_inclusion(&leaves[index], other as u64, size as u64, &proof, &root).is_err());
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_between_any_sizes_and_fail_when_tampered(
        new in 1usize..70, old_pick: usize, seed: u8, byte in 0usize..32, bit in 0u8..8, which: usize,
    ) {
        let leaves = leaves_of(new, seed);
        let new_root = tree_root(&leaves);
        for old in 0..=new {
            let old_root = tree_root(&leaves[..old]);
            let proof = tree_consistency_proof(&leaves, old as u64).unwrap();
            verify_consistency(old as u64, new as u64, &old_root, &new_root, &proof).unwrap();
            if old == 0 {
                continue;
            }
            let mut bad_old = old_root;
            flip(&mut bad_old, byte, bit);
            prop_assert!(verify_consistency(old as u64, new as u64, &bad_old, &new_root, &proof).is_err());
            let mut bad_new = new_root;
            flip(&mut bad_new, byte, bit);
            prop_assert!(verify_consistency(old as u64, new as u64, &old_root, &bad_new, &proof).is_err());
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = which % bad.len();
                flip(&mut bad[k], byte, bit);
                prop_assert!(verify_consistency(old as u64, new as u64, &old_root, &new_root, &bad).is_err());
                prop_assert!(verify_consistency(old as u64, new as u64, &old_root, &new_root, &proof[..proof.len() - 1]).is_err());
            }
        }
        // A tree of other leaves is not consistent with this one.
        let old = 1 + old_pick % new;
        let other = leaves_of(old, seed.wrapping_add(1));
        let proof = tree_consistency_proof(&leaves, old as u64).unwrap();
        prop_assert!(verify_consistency(old as u64, new as u64, &tree_root(&other), &new_root, &proof).is_err());
    }
}
