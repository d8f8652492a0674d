#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Property tests of the blank-node policy on generated Turtle: a label written in the
//! document is never mistaken for one of the parser's anonymous nodes (whatever the label
//! looks like, whatever follows it, however the input is split into reads); anonymous nodes
//! are numbered deterministically; imports are idempotent under every scope.

use std::collections::BTreeSet;
use std::io::Read;

use llmkg_federation_core::rdf::{
    self, BlankNodeScope, ExportOptions, Format, ImportOptions, ImportReport,
};
use llmkg_federation_core::{
    BranchName, ManualClock, MemoryStore, NodeKeypair, OrgId, Repository, Term, Timestamp, Triple,
};
use proptest::prelude::*;
use proptest::sample::select;

fn repo() -> Repository<MemoryStore> {
    Repository::new(
        MemoryStore::new(),
        NodeKeypair::from_secret_bytes([5; 32]),
        OrgId::new("blank").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

/// Labels as a document may write them, including ones that look exactly like the parser's
/// random ids (up to 32 lower-case hex digits starting with a letter).
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_]([A-Za-z0-9_.·é-]{0,8}[A-Za-z0-9_·é-])?",
        "[a-f][0-9a-f]{0,31}",
        select(vec!["b0", "anon", "genid-1", "x.y", "_", "0", "c14n0"]).prop_map(str::to_owned),
    ]
}

/// One statement of the generated document.
#[derive(Clone, Debug)]
enum Piece {
    /// `_:l <urn:p> "v" .`
    Subject(String),
    /// `<urn:s> <urn:p> _:l<end>` where `<end>` is a terminator written right after the label.
    Object(String, &'static str),
    /// `<urn:s> <urn:p> [ <urn:q> _:l ] .`: one anonymous node.
    Nested(String),
    /// `<urn:s> <urn:p> ( _:l "x" … ) .` with `n` items: `n` anonymous list nodes.
    List(String, usize),
    /// `_:l <urn:p> [] .`: one anonymous node.
    Empty(String),
    /// A comment and a literal mentioning a label that is never used as a node.
    Mention(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        label().prop_map(Piece::Subject),
        (label(), select(vec![" .\n", ".\n", ";<urn:q> 1 .\n", ",_:z .\n", "#c\n.\n"]))
            .prop_map(|(l, end)| Piece::Object(l, end)),
        label().prop_map(Piece::Nested),
        (label(), 1usize..4).prop_map(|(l, n)| Piece::List(l, n)),
        label().prop_map(Piece::Empty),
        label().prop_map(Piece::Mention),
    ]
}

/// The document, the labels it uses as nodes, and how many anonymous nodes it has.
fn document(pieces: &[Piece]) -> (String, BTreeSet<String>, usize) {
    let mut doc = String::new();
    let (mut used, mut anonymous) = (BTreeSet::new(), 0);
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Piece::Subject(l) => doc.push_str(&format!("_:{l} <urn:p> \"v{i}\" .\n")),
            Piece::Object(l, end) => {
                doc.push_str(&format!("<urn:s{i}> <urn:p> _:{l}{end}"));
                if end.contains("_:z") {
                    used.insert("z".to_owned());
                }
            }
            Piece::Nested(l) => {
                doc.push_str(&format!("<urn:s{i}> <urn:p> [ <urn:q> _:{l} ] .\n"));
                anonymous += 1;
            }
            Piece::List(l, n) => {
                let items: Vec<String> = (0..*n).map(|k| format!("\"{k}\"")).collect();
                doc.push_str(&format!("<urn:s{i}> <urn:p> ( _:{l} {} ) .\n", items.join(" ")));
                anonymous += n + 1;
            }
            Piece::Empty(l) => {
                doc.push_str(&format!("_:{l} <urn:p> [] .\n"));
                anonymous += 1;
            }
            Piece::Mention(l) => {
                doc.push_str(&format!("# _:{l}x\n<urn:s{i}> <urn:p> \"_:{l}y\" .\n"));
                continue;
            }
        }
        let l = match p {
            Piece::Subject(l)
            | Piece::Object(l, _)
            | Piece::Nested(l)
            | Piece::List(l, _)
            | Piece::Empty(l)
            | Piece::Mention(l) => l,
        };
        used.insert(l.clone());
    }
    (doc, used, anonymous)
}

/// The labels of the blank nodes of `triples`.
fn labels(triples: &[Triple]) -> BTreeSet<String> {
    triples
        .iter()
        .flat_map(|t| [t.subject(), t.object()])
        .filter_map(|t| match t {
            Term::Blank(b) => Some(b.label().to_owned()),
            _ => None,
        })
        .collect()
}

/// Hands out the input in reads of the given sizes (cycling), to move every chunk boundary.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        let (now, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(now);
        self.data = rest;
        Ok(n)
    }
}

fn import(
    repo: &mut Repository<MemoryStore>,
    branch: &BranchName,
    bytes: &[u8],
    format: Format,
    scope: &BlankNodeScope,
) -> ImportReport {
    let options = ImportOptions::new().blank_nodes(scope.clone());
    repo.import(branch, bytes, format, options).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn written_labels_are_kept_and_anonymous_nodes_are_numbered(
        pieces in proptest::collection::vec(piece(), 1..12),
        sizes in proptest::collection::vec(1usize..9, 1..4),
    ) {
        let (doc, used, anonymous) = document(&pieces);
        let whole = rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new())
            .unwrap_or_else(|e| panic!("{e}\n{doc}"))
            .into_triples();
        let found = labels(&whole);
        let (anon, written): (BTreeSet<String>, BTreeSet<String>) =
            found.into_iter().partition(|l| l.starts_with("anon-") && !used.contains(l));
        prop_assert_eq!(&written, &used, "{}", doc);
        prop_assert_eq!(anon.len(), anonymous, "{}", doc);
        let mut numbers: Vec<usize> =
            anon.iter().map(|l| l.rsplit('-').next().unwrap().parse().unwrap()).collect();
        numbers.sort_unstable();
        prop_assert_eq!(numbers, (0..anonymous).collect::<Vec<_>>());

        // The same document in small, uneven reads gives the same triples (same labels).
        let chunked = Chunked { data: doc.as_bytes(), sizes, next: 0 };
        let again = rdf::read(chunked, Format::Turtle, ImportOptions::new()).unwrap();
        prop_assert_eq!(again.into_triples(), whole);
    }

    #[test]
    fn imports_are_idempotent_under_every_scope(
        pieces in proptest::collection::vec(piece(), 1..8),
        scope in prop_oneof![
            Just(BlankNodeScope::Branch),
            Just(BlankNodeScope::Graph),
            "[a-z:/.]{0,12}".prop_map(BlankNodeScope::Named),
        ],
    ) {
        let (doc, _, _) = document(&pieces);
        let mut repo = repo();
        let main = BranchName::new("main").unwrap();
        let first = import(&mut repo, &main, doc.as_bytes(), Format::Turtle, &scope);
        prop_assert!(first.commit.is_some());
        let again = import(&mut repo, &main, doc.as_bytes(), Format::Turtle, &scope);
        prop_assert_eq!(again.commit, None, "{}", doc);
        // Exporting and importing the export under the same scope changes nothing.
        let head = repo.head(&main).unwrap().unwrap();
        for format in Format::ALL {
            let mut out = Vec::new();
            repo.export(head, &mut out, format, &ExportOptions::new()).unwrap();
            let back = import(&mut repo, &main, &out, format, &scope);
            prop_assert_eq!(back.commit, None, "{} under {:?}:\n{}", format, scope,
                String::from_utf8_lossy(&out));
        }
    }
}
