#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Laws of the canonical encoding: every value round-trips, encoding is deterministic,
//! decoding never panics on arbitrary or mutated input, rejects non-canonical forms, and
//! allocates in proportion to its input.

use std::fmt::Debug;

use llmkg_federation_core::encoding::{self, MAX_ENCODED_LEN};
use llmkg_federation_core::{
    BlankNode, BranchName, ChangeSet, Commit, CommitId, CommitVerifyError, DecodeError, GraphState,
    Iri, Literal, LiteralKind, MAX_PARENTS, NodeId, NodeKeypair, OrgId, RDF_LANG_STRING,
    SignatureError, SignedCommit, StateRoot, Term, Timestamp, Triple, TripleId, XSD_STRING,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Short strings over all of Unicode (control characters, NUL, astral planes included).
fn any_text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

fn iri() -> impl Strategy<Value = Iri> {
    let pool = select(vec![
        "https://example.org/a",
        "https://example.org/b",
        "http://xmlns.com/foaf/0.1/name",
        "http://www.w3.org/2001/XMLSchema#integer",
        "urn:isbn:0451450523",
        "mailto:alice@example.org",
    ])
    .prop_map(str::to_owned);
    let http = (
        "https?",
        "[a-z][a-z0-9-]{0,9}",
        "(org|com|example)",
        "[A-Za-z0-9._~-]{0,10}",
        proptest::option::of("[A-Za-z0-9]{0,6}"),
    )
        .prop_map(|(scheme, host, tld, path, frag)| match frag {
            Some(frag) => format!("{scheme}://{host}.{tld}/{path}#{frag}"),
            None => format!("{scheme}://{host}.{tld}/{path}"),
        });
    let urn = ("[a-z]{1,8}", "[a-z0-9]{1,8}").prop_map(|(nid, nss)| format!("urn:{nid}:{nss}"));
    // IRIs (unlike URIs) admit non-ASCII characters and percent-encodings.
    let unicode = "[a-zé日本ü%0-9]{0,6}".prop_map(|s| {
        let s = s.replace('%', "%2F");
        format!("https://example.org/ü/{s}")
    });
    prop_oneof![pool, http, urn, unicode].prop_map(|s| Iri::new(s).unwrap())
}

fn blank() -> impl Strategy<Value = BlankNode> {
    prop_oneof![
        select(vec!["b0", "b1", "x", "é.1"]).prop_map(str::to_owned),
        "[A-Za-z0-9_]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9_-])?",
    ]
    .prop_map(|s| BlankNode::new(s).unwrap())
}

fn language_tag() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec!["en", "en-gb", "de-CH", "EN-US", "fr", "zh-Hant-TW", "sr-Latn-RS", "es-419",])
            .prop_map(str::to_owned),
        "[a-zA-Z]{2,3}(-[a-zA-Z]{2})?",
    ]
}

fn datatype() -> impl Strategy<Value = Iri> {
    prop_oneof![
        select(vec![
            "http://www.w3.org/2001/XMLSchema#integer",
            "http://www.w3.org/2001/XMLSchema#boolean",
            "http://www.w3.org/2001/XMLSchema#dateTime",
            "http://www.w3.org/1999/02/22-rdf-syntax-ns#HTML",
        ])
        .prop_map(|s| Iri::new(s).unwrap()),
        iri(),
    ]
    .prop_filter("not xsd:string or rdf:langString", |i| {
        i.as_str() != XSD_STRING && i.as_str() != RDF_LANG_STRING
    })
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any_text(16).prop_map(|v| Literal::string(v).unwrap()),
        (any_text(16), datatype()).prop_map(|(v, dt)| {
            let l = Literal::typed(v, dt.clone()).unwrap();
            assert_eq!(l.kind(), &LiteralKind::Typed(dt));
            l
        }),
        (any_text(16), language_tag()).prop_map(|(v, tag)| {
            let l = Literal::language(v, &tag).unwrap();
            assert_eq!(l.language_tag(), Some(tag.to_ascii_lowercase().as_str()));
            l
        }),
    ]
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![
        iri().prop_map(Term::Iri),
        blank().prop_map(Term::Blank),
        literal().prop_map(Term::Literal),
    ]
}

fn triple() -> impl Strategy<Value = Triple> {
    let subject = prop_oneof![iri().prop_map(Term::Iri), blank().prop_map(Term::Blank)];
    (subject, iri(), term()).prop_map(|(s, p, o)| Triple::new(s, p, o).unwrap())
}

fn change_set() -> impl Strategy<Value = ChangeSet> {
    (vec(triple(), 0..6), vec(triple(), 0..6)).prop_map(|(add, remove)| {
        let remove: Vec<Triple> = remove.into_iter().filter(|t| !add.contains(t)).collect();
        ChangeSet::new(add, remove).unwrap()
    })
}

fn org_id() -> impl Strategy<Value = OrgId> {
    "[a-z0-9][a-z0-9-]{0,63}".prop_map(|s| OrgId::new(s).unwrap())
}

fn branch_name() -> impl Strategy<Value = BranchName> {
    let segment = "[A-Za-z0-9._-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..");
    prop_oneof![vec(segment, 1..5).prop_map(|segs| segs.join("/")), "[a-z]{200,255}",]
        .prop_map(|s| BranchName::new(s).unwrap())
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![Just(0i64), Just(i64::MIN), Just(i64::MAX), -1i64..=1, any::<i64>()]
        .prop_map(Timestamp::from_micros)
}

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(|seed| NodeKeypair::from_secret_bytes(seed).node_id())
}

/// A commit together with the secret seed of its author.
fn authored_commit() -> impl Strategy<Value = ([u8; 32], Commit)> {
    (
        any::<[u8; 32]>(),
        vec(any::<[u8; 32]>(), 0..=MAX_PARENTS),
        change_set(),
        org_id(),
        timestamp(),
        any_text(40),
        any::<[u8; 32]>(),
    )
        .prop_map(|(seed, mut parents, changes, org, ts, message, root)| {
            parents.sort_unstable();
            parents.dedup();
            let author = NodeKeypair::from_secret_bytes(seed).node_id();
            let commit = Commit::new(
                parents.into_iter().map(CommitId::from_bytes).collect(),
                changes,
                author,
                org,
                ts,
                message,
                StateRoot::from_bytes(root),
            )
            .unwrap();
            (seed, commit)
        })
}

fn commit() -> impl Strategy<Value = Commit> {
    authored_commit().prop_map(|(_, c)| c)
}

fn signed_commit() -> impl Strategy<Value = SignedCommit> {
    authored_commit()
        .prop_map(|(seed, c)| SignedCommit::sign(&NodeKeypair::from_secret_bytes(seed), c).unwrap())
}

/// One random flip, one random strict prefix, one appended byte.
#[derive(Debug, Clone)]
struct Mutation {
    flip_at: Index,
    mask: u8,
    cut_at: Index,
    extra: u8,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (any::<Index>(), 1u8..=255, any::<Index>(), any::<u8>())
        .prop_map(|(flip_at, mask, cut_at, extra)| Mutation { flip_at, mask, cut_at, extra })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The canonical encoding of any serializable value (test-local types included).
fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    encoding::try_encode(v).unwrap()
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// `decode(encode(v)) == v`, encoding is deterministic and the decoded value re-encodes to the
/// same bytes.
fn round_trip<T>(v: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = enc(v);
    prop_assert_eq!(&enc(v), &bytes, "encoding is not deterministic");
    let mut appended = vec![0xAA];
    appended.extend_from_slice(&enc(v));
    prop_assert_eq!(&appended[1..], &bytes[..], "encoding disagrees with itself");
    let back: T = encoding::decode(&bytes).map_err(fail)?;
    prop_assert_eq!(&back, v);
    prop_assert_eq!(enc(&back), bytes);
    Ok(())
}

/// Decoding mutated encodings never panics; a strict prefix or an extension is an error; and
/// a flipped encoding that still decodes is the canonical encoding of what it decodes to.
fn mutations<T>(v: &T, m: &Mutation) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = enc(v);
    prop_assert!(!bytes.is_empty());

    let mut flipped = bytes.clone();
    flipped[m.flip_at.index(bytes.len())] ^= m.mask;
    if let Ok(other) = encoding::decode::<T>(&flipped) {
        prop_assert_ne!(&other, v, "different bytes decoded to the same value");
        prop_assert_eq!(enc(&other), flipped, "accepted a non-canonical encoding");
    }

    let cut = m.cut_at.index(bytes.len());
    let truncated = encoding::decode::<T>(&bytes[..cut]);
    prop_assert!(truncated.is_err(), "prefix of {} bytes decoded", cut);

    let mut extended = bytes.clone();
    extended.push(m.extra);
    let r = encoding::decode::<T>(&extended);
    prop_assert!(
        matches!(r, Err(DecodeError::TrailingBytes { extra: 1, .. })),
        "extended encoding: {:?}",
        r
    );
    Ok(())
}

/// Feeds `bytes` to the decoder of `T`: it must return, and whatever it returns must
/// round-trip.
fn decode_any<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(v) = encoding::decode::<T>(bytes) {
        prop_assert_eq!(&enc(&v), bytes, "accepted a non-canonical encoding");
        round_trip(&v)?;
    }
    Ok(())
}

fn iri_of(s: &str) -> Iri {
    Iri::new(s).unwrap()
}

fn sample_triple(s: &str, o: &str) -> Triple {
    Triple::new(iri_of(s), iri_of("https://example.org/p"), Literal::string(o).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Round trips and determinism
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn iri_round_trips(v in iri()) {
        round_trip(&v)?;
    }

    #[test]
    fn blank_node_round_trips(v in blank()) {
        round_trip(&v)?;
    }

    /// IRIs, blank nodes and language tags are written as their text, borrowed: exactly the
    /// bytes of the same text as a `String`, so hashes and signatures do not depend on how.
    #[test]
    fn names_encode_as_their_text(i in iri(), b in blank(), tag in language_tag()) {
        let text = |s: &str| encoding::try_encode(&s.to_string()).unwrap();
        prop_assert_eq!(encoding::try_encode(&i).unwrap(), text(i.as_str()));
        prop_assert_eq!(encoding::try_encode(&b).unwrap(), text(b.label()));
        let literal = Literal::language("x", &tag).unwrap();
        let LiteralKind::Language(tag) = literal.kind() else { panic!("not tagged") };
        prop_assert_eq!(encoding::try_encode(tag).unwrap(), text(tag.as_str()));
    }

    /// The root of a set of triples computed from their ids alone is the root of the state
    /// holding them, whatever the order and repetitions.
    #[test]
    fn root_of_triples_is_the_states_root(
        triples in vec(triple(), 0..40),
        repeats in vec(any::<Index>(), 0..10),
    ) {
        let mut listed = triples.clone();
        for r in &repeats {
            if !triples.is_empty() {
                listed.push(r.get(&triples).clone());
            }
        }
        listed.reverse();
        let mut state = GraphState::new();
        for t in &triples {
            state.insert(t).unwrap();
        }
        prop_assert_eq!(GraphState::root_of(&listed), state.state_root());
    }

    #[test]
    fn literal_round_trips(v in literal()) {
        round_trip(&v)?;
    }

    #[test]
    fn term_round_trips(v in term()) {
        round_trip(&v)?;
    }

    #[test]
    fn triple_round_trips(v in triple()) {
        round_trip(&v)?;
    }

    #[test]
    fn change_set_round_trips(v in change_set()) {
        round_trip(&v)?;
    }

    #[test]
    fn org_id_round_trips(v in org_id()) {
        round_trip(&v)?;
    }

    #[test]
    fn branch_name_round_trips(v in branch_name()) {
        round_trip(&v)?;
    }

    #[test]
    fn timestamp_round_trips(v in timestamp()) {
        round_trip(&v)?;
    }

    #[test]
    fn node_id_round_trips(v in node_id()) {
        round_trip(&v)?;
    }

    #[test]
    fn commit_round_trips(v in commit()) {
        round_trip(&v)?;
        // The id is a function of the encoding.
        let back: Commit = encoding::decode(&enc(&v)).map_err(fail)?;
        prop_assert_eq!(back.id(), v.id());
    }

    #[test]
    fn signed_commit_round_trips(sc in signed_commit()) {
        let bytes = sc.encode();
        prop_assert_eq!(&sc.encode(), &bytes, "encoding is not deterministic");
        let back = SignedCommit::decode(&bytes, Some(sc.id())).map_err(fail)?;
        prop_assert_eq!(&back, &sc);
        prop_assert_eq!(back.id(), sc.commit().id());
        prop_assert_eq!(&back.encode(), &bytes);
        prop_assert_eq!(back.signature(), sc.signature());
        prop_assert_eq!(back.commit().author(), sc.commit().author());
        // The id an envelope claims, without decoding, is its commit's.
        prop_assert_eq!(SignedCommit::claimed_id(&bytes), Some(sc.id()));
        prop_assert_eq!(SignedCommit::claimed_id(&bytes[..96]), None);
    }

    #[test]
    fn triple_id_is_a_function_of_the_triple(a in triple(), b in triple()) {
        let decoded: Triple = encoding::decode(&enc(&a)).map_err(fail)?;
        prop_assert_eq!(TripleId::of(&a), TripleId::of(&a.clone()));
        prop_assert_eq!(TripleId::of(&a), TripleId::of(&decoded));
        prop_assert_eq!(TripleId::of(&a), a.id());
        // And distinguishes distinct triples.
        prop_assert_eq!(a == b, TripleId::of(&a) == TripleId::of(&b));
    }

    #[test]
    fn distinct_values_have_distinct_encodings(a in term(), b in term()) {
        prop_assert_eq!(a == b, enc(&a) == enc(&b));
    }

    #[test]
    fn change_set_construction_is_order_insensitive(
        add in vec(triple(), 0..8),
        seed in any::<u64>(),
    ) {
        let mut shuffled = add.clone();
        // A cheap deterministic permutation, duplicates included.
        let n = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % n);
        shuffled.extend(add.iter().take((seed % 3) as usize).cloned());
        let a = ChangeSet::adding(add);
        let b = ChangeSet::adding(shuffled);
        prop_assert_eq!(enc(&a), enc(&b));
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary and mutated input
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_any::<Iri>(&bytes)?;
        decode_any::<BlankNode>(&bytes)?;
        decode_any::<Literal>(&bytes)?;
        decode_any::<Term>(&bytes)?;
        decode_any::<Triple>(&bytes)?;
        decode_any::<ChangeSet>(&bytes)?;
        decode_any::<OrgId>(&bytes)?;
        decode_any::<BranchName>(&bytes)?;
        decode_any::<Timestamp>(&bytes)?;
        decode_any::<NodeId>(&bytes)?;
        decode_any::<Commit>(&bytes)?;
        if let Ok(sc) = SignedCommit::decode(&bytes, None) {
            prop_assert_eq!(&sc.encode(), &bytes);
            prop_assert_eq!(SignedCommit::decode(&sc.encode(), Some(sc.id())).map_err(fail)?, sc);
        }
    }

    /// Arbitrary bytes behind a plausible prefix reach deeper into the decoders.
    #[test]
    fn arbitrary_bytes_after_valid_prefix_never_panic(
        v in triple(),
        keep in any::<Index>(),
        tail in vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = enc(&v);
        bytes.truncate(keep.index(bytes.len() + 1));
        bytes.extend_from_slice(&tail);
        decode_any::<Triple>(&bytes)?;
        decode_any::<ChangeSet>(&[&[1u8][..], &bytes, &[0]].concat())?;
    }

    #[test]
    fn mutated_iri(v in iri(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_blank_node(v in blank(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_literal(v in literal(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_term(v in term(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_triple(v in triple(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_change_set(v in change_set(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_org_id(v in org_id(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_branch_name(v in branch_name(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_timestamp(v in timestamp(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_node_id(v in node_id(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_commit(v in commit(), m in mutation()) {
        mutations(&v, &m)?;
    }

    #[test]
    fn mutated_signed_commit(sc in signed_commit(), m in mutation()) {
        let bytes = sc.encode();

        let mut flipped = bytes.clone();
        flipped[m.flip_at.index(bytes.len())] ^= m.mask;
        prop_assert!(SignedCommit::decode(&flipped, None).is_err());

        let cut = m.cut_at.index(bytes.len());
        prop_assert!(SignedCommit::decode(&bytes[..cut], None).is_err());

        let mut extended = bytes;
        extended.push(m.extra);
        let r = SignedCommit::decode(&extended, None);
        prop_assert!(
            matches!(
                r,
                Err(CommitVerifyError::Signature(SignatureError::Decode(
                    DecodeError::TrailingBytes { extra: 1, .. }
                )))
            ),
            "extended envelope: {:?}",
            r
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Non-canonical forms
// ---------------------------------------------------------------------------------------------

/// Same serde shape as `ChangeSet`, without its invariants.
#[derive(Serialize)]
struct RawChangeSet {
    add: Vec<Triple>,
    remove: Vec<Triple>,
}

/// Same serde shape as `LiteralKind`, with the datatype and tag as free text.
#[derive(Serialize)]
enum RawKind {
    String,
    Typed(String),
    Language(String),
}

/// Same serde shape as `Literal`.
#[derive(Serialize)]
struct RawLiteral {
    value: String,
    kind: RawKind,
}

/// Same serde shape as `Term`, with IRIs and labels as free text.
#[derive(Serialize)]
enum RawTerm {
    Iri(String),
    Blank(String),
    Literal(RawLiteral),
}

/// Same serde shape as `Triple`.
#[derive(Serialize)]
struct RawTriple {
    subject: RawTerm,
    predicate: RawTerm,
    object: RawTerm,
}

fn raw_literal(value: &str, kind: RawKind) -> RawLiteral {
    RawLiteral { value: value.to_owned(), kind }
}

#[test]
fn look_alike_structs_match_the_real_encodings() {
    // The raw shapes encode exactly like the real types, so the rejections below are about
    // the content, not the shape.
    let (a, b) = (sample_triple("urn:x:a", "1"), sample_triple("urn:x:b", "2"));
    let raw = RawChangeSet { add: vec![a.clone(), b.clone()], remove: vec![] };
    let real = ChangeSet::new([b, a], []).unwrap();
    assert_eq!(enc(&raw), enc(&real));
    assert_eq!(encoding::decode::<ChangeSet>(&enc(&raw)), Ok(real));

    let cases = [
        (raw_literal("x", RawKind::String), Literal::string("x").unwrap()),
        (
            raw_literal("1", RawKind::Typed("http://www.w3.org/2001/XMLSchema#integer".into())),
            Literal::typed("1", iri_of("http://www.w3.org/2001/XMLSchema#integer")).unwrap(),
        ),
        (
            raw_literal("colour", RawKind::Language("en-gb".into())),
            Literal::language("colour", "en-GB").unwrap(),
        ),
    ];
    for (raw, real) in cases {
        let bytes = enc(&raw);
        assert_eq!(bytes, enc(&real));
        assert_eq!(encoding::decode::<Literal>(&bytes), Ok(real));
    }

    let raw = RawTriple {
        subject: RawTerm::Blank("b0".into()),
        predicate: RawTerm::Iri("https://example.org/p".into()),
        object: RawTerm::Literal(raw_literal("o", RawKind::String)),
    };
    let real = Triple::new(
        BlankNode::new("b0").unwrap(),
        iri_of("https://example.org/p"),
        Literal::string("o").unwrap(),
    )
    .unwrap();
    assert_eq!(enc(&raw), enc(&real));
    assert_eq!(encoding::decode::<Triple>(&enc(&raw)), Ok(real));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn unsorted_change_set_is_rejected(a in triple(), b in triple(), removing in any::<bool>()) {
        prop_assume!(a != b);
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let descending = vec![hi, lo];
        let raw = if removing {
            RawChangeSet { add: vec![], remove: descending }
        } else {
            RawChangeSet { add: descending, remove: vec![] }
        };
        let r = encoding::decode::<ChangeSet>(&enc(&raw));
        prop_assert!(r.is_err(), "unsorted change set decoded: {:?}", r);
    }

    #[test]
    fn duplicate_in_change_set_is_rejected(t in triple(), others in vec(triple(), 0..4)) {
        let mut add: Vec<Triple> = others;
        add.push(t.clone());
        add.push(t);
        add.sort();
        let raw = RawChangeSet { add, remove: vec![] };
        let r = encoding::decode::<ChangeSet>(&enc(&raw));
        prop_assert!(r.is_err(), "change set with a duplicate decoded: {:?}", r);
    }

    #[test]
    fn overlapping_change_set_is_rejected(t in triple()) {
        let raw = RawChangeSet { add: vec![t.clone()], remove: vec![t] };
        prop_assert!(encoding::decode::<ChangeSet>(&enc(&raw)).is_err());
    }

    #[test]
    fn explicit_xsd_string_literal_is_rejected(value in any_text(16)) {
        let raw = raw_literal(&value, RawKind::Typed(XSD_STRING.into()));
        let bytes = enc(&raw);
        prop_assert!(encoding::decode::<Literal>(&bytes).is_err());
        // Also inside a term.
        let raw = RawTerm::Literal(raw_literal(&value, RawKind::Typed(XSD_STRING.into())));
        prop_assert!(encoding::decode::<Term>(&enc(&raw)).is_err());
        // The canonical form of the same literal is accepted.
        let canonical = Literal::typed(value.clone(), iri_of(XSD_STRING)).map_err(fail)?;
        prop_assert_eq!(&canonical, &Literal::string(value).map_err(fail)?);
        round_trip(&canonical)?;
    }

    #[test]
    fn upper_case_language_tag_is_rejected(value in any_text(8), tag in language_tag()) {
        let lower = tag.to_ascii_lowercase();
        let ok = raw_literal(&value, RawKind::Language(lower.clone()));
        let decoded = encoding::decode::<Literal>(&enc(&ok)).map_err(fail)?;
        prop_assert_eq!(decoded.language_tag(), Some(lower.as_str()));

        let mut upper = lower.clone();
        upper.replace_range(..1, &lower[..1].to_ascii_uppercase());
        let raw = raw_literal(&value, RawKind::Language(upper.clone()));
        let r = encoding::decode::<Literal>(&enc(&raw));
        prop_assert!(r.is_err(), "tag {:?} decoded: {:?}", upper, r);
    }
}

#[test]
fn rdf_lang_string_without_tag_is_rejected() {
    let raw = raw_literal("x", RawKind::Typed(RDF_LANG_STRING.into()));
    assert!(encoding::decode::<Literal>(&enc(&raw)).is_err());
}

/// The address of a literal's datatype or language tag text.
fn qualifier_text(l: &Literal) -> Option<*const u8> {
    match l.kind() {
        LiteralKind::String => None,
        LiteralKind::Typed(dt) => Some(dt.as_str().as_ptr()),
        LiteralKind::Language(tag) => Some(tag.as_str().as_ptr()),
    }
}

/// Decoded literals hold each of their few datatypes and language tags once, not once each;
/// a datatype longer than what is remembered still decodes, to its own copy.
#[test]
fn decoded_literals_share_their_datatypes_and_tags() {
    let integer = iri_of("http://www.w3.org/2001/XMLSchema#integer");
    let long = iri_of(&format!("https://example.org/{}", "d".repeat(300)));
    let mut literals = Vec::new();
    for i in 0..40 {
        literals.push(Literal::typed(i.to_string(), integer.clone()).unwrap());
        literals.push(Literal::language(format!("label {i}"), "en").unwrap());
        literals.push(Literal::typed(i.to_string(), long.clone()).unwrap());
    }
    let decoded: Vec<Literal> = encoding::decode(&enc(&literals)).unwrap();
    assert_eq!(decoded, literals);
    for (first, step) in [(0, "integer"), (1, "tag")] {
        let addresses: Vec<_> =
            decoded.iter().skip(first).step_by(3).map(|l| qualifier_text(l).unwrap()).collect();
        assert!(addresses.windows(2).all(|w| w[0] == w[1]), "{step} not shared");
    }
    let long_addresses: Vec<_> =
        decoded.iter().skip(2).step_by(3).map(|l| qualifier_text(l).unwrap()).collect();
    assert!(long_addresses.windows(2).all(|w| w[0] != w[1]), "a long datatype was kept");
}

#[test]
fn invalid_language_tag_is_rejected() {
    for tag in ["", "-", "en--gb", "123456789", "en_gb", "é"] {
        let raw = raw_literal("x", RawKind::Language(tag.into()));
        let r = encoding::decode::<Literal>(&enc(&raw));
        assert!(r.is_err(), "tag {tag:?} decoded: {r:?}");
    }
}

#[test]
fn invalid_iri_inside_a_term_is_rejected() {
    for bad in [
        "",
        "not an iri",
        "relative/path",
        "http://exa mple.org/",
        "http://example.org/<x>",
        "https://example.org/\u{0}",
    ] {
        let r = encoding::decode::<Term>(&enc(&RawTerm::Iri(bad.into())));
        assert!(r.is_err(), "IRI {bad:?} decoded as a term: {r:?}");
        assert!(encoding::decode::<Iri>(&enc(bad)).is_err());

        // As a datatype, and as the predicate of a triple.
        let raw = RawTerm::Literal(raw_literal("1", RawKind::Typed(bad.into())));
        assert!(encoding::decode::<Term>(&enc(&raw)).is_err());
        let raw = RawTriple {
            subject: RawTerm::Iri("urn:x:s".into()),
            predicate: RawTerm::Iri(bad.into()),
            object: RawTerm::Iri("urn:x:o".into()),
        };
        assert!(encoding::decode::<Triple>(&enc(&raw)).is_err());
    }
    // The same shape with a valid IRI is accepted.
    let good = RawTerm::Iri("https://example.org/x".into());
    assert_eq!(
        encoding::decode::<Term>(&enc(&good)),
        Ok(Term::iri("https://example.org/x").unwrap())
    );
}

#[test]
fn invalid_blank_node_label_is_rejected() {
    for bad in ["", "a b", "_:x", "x\n", "a.", ".a", "-a", "a:b", "×"] {
        let r = encoding::decode::<Term>(&enc(&RawTerm::Blank(bad.into())));
        assert!(r.is_err(), "label {bad:?} decoded: {r:?}");
    }
}

#[test]
fn misplaced_terms_in_a_triple_are_rejected() {
    let lit = || RawTerm::Literal(raw_literal("x", RawKind::String));
    let iri = || RawTerm::Iri("urn:x:y".into());
    let blank = || RawTerm::Blank("b".into());
    for (subject, predicate) in [(lit(), iri()), (iri(), blank()), (iri(), lit())] {
        let raw = RawTriple { subject, predicate, object: iri() };
        assert!(encoding::decode::<Triple>(&enc(&raw)).is_err());
    }
}

#[test]
fn invalid_org_ids_and_branch_names_are_rejected() {
    for bad in ["", "-acme", "Acme", "acme research", &"a".repeat(65)] {
        assert!(encoding::decode::<OrgId>(&enc(bad)).is_err(), "{bad:?}");
    }
    for bad in ["", "/main", "main/", "a//b", "a/../b", ".", "a b", &"a".repeat(256)] {
        assert!(encoding::decode::<BranchName>(&enc(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn unknown_enum_variant_is_rejected() {
    // Term has three variants: 0, 1, 2.
    let mut bytes = enc(&Term::iri("urn:x:y").unwrap());
    bytes[0] = 3;
    assert!(encoding::decode::<Term>(&bytes).is_err());
}

fn root_commit(kp: &NodeKeypair) -> Commit {
    Commit::new(
        vec![],
        ChangeSet::default(),
        kp.node_id(),
        OrgId::new("acme").unwrap(),
        Timestamp::from_micros(1),
        "m".into(),
        StateRoot::from_bytes([0; 32]),
    )
    .unwrap()
}

/// Postcard accepts over-long varints such as `[0x80, 0x00]` for 0; the decoders of this
/// crate re-encode what they decoded and reject any input that is not the canonical encoding,
/// so one value has exactly one accepted encoding.
#[test]
fn non_minimal_varints_are_rejected() {
    // A timestamp of 0 is the single byte 0x00.
    assert_eq!(enc(&Timestamp::from_micros(0)), [0x00]);
    let r = encoding::decode::<Timestamp>(&[0x80, 0x00]);
    assert!(matches!(r, Err(DecodeError::NonCanonical { .. })), "over-long varint: {r:?}");

    // An enum variant index.
    let term = Term::iri("urn:x:y").unwrap();
    let bytes = enc(&term);
    let long = [&[0x80, 0x00][..], &bytes[1..]].concat();
    let r = encoding::decode::<Term>(&long);
    assert!(matches!(r, Err(DecodeError::NonCanonical { .. })), "over-long variant: {r:?}");

    // A commit's parent count.
    let kp = NodeKeypair::from_secret_bytes([7; 32]);
    let commit = root_commit(&kp);
    let bytes = enc(&commit);
    assert_eq!(bytes[0], 0x00);
    let long = [&[0x80, 0x00][..], &bytes[1..]].concat();
    let r = encoding::decode::<Commit>(&long);
    assert!(matches!(r, Err(DecodeError::NonCanonical { .. })), "over-long count: {r:?}");
}

/// Re-spells the first varint of `bytes` (which must be a one-byte varint) with a redundant
/// continuation byte: `[b]` becomes `[b | 0x80, 0x00]`, the same number.
fn overlong_first_varint(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes[0] < 0x80);
    [&[bytes[0] | 0x80, 0x00][..], &bytes[1..]].concat()
}

fn overlong_is_rejected<T>(v: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = enc(v);
    // Every type here starts with a varint (a length, a variant index or a zigzag integer);
    // values whose first varint takes several bytes are left out.
    if bytes[0] < 0x80 {
        let r = encoding::decode::<T>(&overlong_first_varint(&bytes));
        prop_assert!(matches!(r, Err(DecodeError::NonCanonical { .. })), "{:?}", r);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn overlong_varints_are_rejected_everywhere(
        iri in iri(),
        lit in literal(),
        term in term(),
        triple in triple(),
        changes in change_set(),
        org in org_id(),
        branch in branch_name(),
        ts in timestamp(),
    ) {
        overlong_is_rejected(&iri)?;
        overlong_is_rejected(&lit)?;
        overlong_is_rejected(&term)?;
        overlong_is_rejected(&triple)?;
        overlong_is_rejected(&changes)?;
        overlong_is_rejected(&org)?;
        overlong_is_rejected(&branch)?;
        overlong_is_rejected(&ts)?;
    }

    #[test]
    fn overlong_varints_in_signed_commits_are_rejected(sc in signed_commit(), at in any::<Index>()) {
        let bytes = sc.encode();
        // Parent count at the front; also re-spell the signature's length prefix (64), the
        // byte before the last 64.
        let long = overlong_first_varint(&bytes);
        prop_assert!(SignedCommit::decode(&long, None).is_err());
        prop_assert!(SignedCommit::decode(&long, Some(sc.id())).is_err());
        let n = bytes.len();
        prop_assert_eq!(bytes[n - 65], 64);
        let long = [&bytes[..n - 65], &[0xc0, 0x00][..], &bytes[n - 64..]].concat();
        prop_assert!(SignedCommit::decode(&long, Some(sc.id())).is_err());
        // Any single inserted 0x00 or 0x80 byte is rejected.
        for extra in [0x00u8, 0x80] {
            let mut ins = bytes.clone();
            ins.insert(at.index(n + 1), extra);
            prop_assert!(SignedCommit::decode(&ins, None).is_err());
        }
    }
}

/// A commit-context signature, made with the key directly: the public API refuses the
/// reserved context, which is the point; a test forging envelopes needs it anyway.
fn forge_commit_signature(kp: &NodeKeypair, message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::Signer as _;
    let context = b"llmkg/commit/v1";
    let mut input = (context.len() as u64).to_le_bytes().to_vec();
    input.extend_from_slice(context);
    input.extend_from_slice(message);
    ed25519_dalek::SigningKey::from_bytes(&kp.secret_bytes()).sign(&input).to_bytes()
}

/// Without that check the author of a commit could sign a second, non-canonical
/// encoding of it and have it accepted under a second id.
#[test]
fn a_commit_has_one_id() {
    let kp = NodeKeypair::from_secret_bytes([7; 32]);
    let commit = root_commit(&kp);
    let canonical = enc(&commit);
    let long = [&[0x80, 0x00][..], &canonical[1..]].concat();
    // The id as commit.rs computes it: BLAKE3(len(domain) as u64 LE ‖ domain ‖ encoding).
    let domain = b"llmkg/commit/v1";
    let mut h = blake3::Hasher::new();
    h.update(&(domain.len() as u64).to_le_bytes());
    h.update(domain);
    h.update(&canonical);
    assert_eq!(*h.finalize().as_bytes(), *commit.id().as_bytes(), "id recipe is stale");
    let mut h = blake3::Hasher::new();
    h.update(&(domain.len() as u64).to_le_bytes());
    h.update(domain);
    h.update(&long);
    let long_id = *h.finalize().as_bytes();
    // Envelope: value, signer (32 bytes), signature as a byte string (length 64, then bytes).
    let envelope = |value: &[u8], signed: &[u8; 32]| {
        let mut e = value.to_vec();
        e.extend_from_slice(kp.node_id().as_bytes());
        e.push(64);
        e.extend_from_slice(&forge_commit_signature(&kp, signed));
        e
    };
    // The recipe is right: the canonical envelope built this way is accepted ...
    let sc = SignedCommit::decode(&envelope(&canonical, commit.id().as_bytes()), None).unwrap();
    assert_eq!(sc.id(), commit.id());
    // ... and the author's signature over the second spelling is not.
    let r = SignedCommit::decode(&envelope(&long, &long_id), None);
    assert!(
        r.is_err(),
        "the same commit was accepted under a second id: {:?}",
        r.map(|sc| sc.id())
    );
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn input_longer_than_the_limit_is_too_large(v in triple(), under in 1usize..8) {
        let bytes = enc(&v);
        let limit = bytes.len().saturating_sub(under);
        let r = encoding::decode_with_limit::<Triple>(&bytes, limit);
        prop_assert_eq!(r, Err(DecodeError::TooLarge { len: bytes.len(), limit }));
        // At the limit exactly it decodes.
        prop_assert_eq!(encoding::decode_with_limit::<Triple>(&bytes, bytes.len()), Ok(v));
    }
}

#[test]
fn too_large_is_checked_before_decoding() {
    // Garbage longer than the limit is TooLarge, not Malformed.
    let r = encoding::decode_with_limit::<Commit>(&[0xff; 100], 10);
    assert_eq!(r, Err(DecodeError::TooLarge { len: 100, limit: 10 }));
    // Empty input is within any limit: it is malformed, not too large.
    assert!(matches!(
        encoding::decode_with_limit::<Timestamp>(&[], 0),
        Err(DecodeError::Malformed { .. })
    ));
    // The default limit is the documented one.
    let big = vec![0u8; MAX_ENCODED_LEN + 1];
    assert_eq!(
        encoding::decode::<Timestamp>(&big),
        Err(DecodeError::TooLarge { len: MAX_ENCODED_LEN + 1, limit: MAX_ENCODED_LEN })
    );
}

// Huge claimed lengths, with the heap they make a decoder use measured: tests/decode_alloc.rs.
