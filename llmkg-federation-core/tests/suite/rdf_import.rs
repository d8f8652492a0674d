#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! RDF import behaviour on small documents: malformed input is a positioned, typed error that
//! leaves the branch unchanged; blank nodes get stable labels; graphs map to branches;
//! progress is reported; replace mode records removals.

use llmkg_federation_core::rdf::{
    self, BlankNodeScope, ExportOptions, Format, GraphName, GraphSelection, ImportError,
    ImportMode, ImportOptions, Progress,
};
use llmkg_federation_core::{
    BranchName, ManualClock, MemoryStore, NodeKeypair, OrgId, Repository, StateRoot, Term,
    TermError, Timestamp,
};

fn repo() -> Repository<MemoryStore> {
    Repository::new(
        MemoryStore::new(),
        NodeKeypair::from_secret_bytes([9; 32]),
        OrgId::new("acme").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

fn root(repo: &mut Repository<MemoryStore>, branch: &BranchName) -> StateRoot {
    let head = repo.head(branch).unwrap().expect("branch exists");
    repo.load_commit(head).unwrap().commit().state_root()
}

const GOOD: &str = "<https://example.org/a> <https://example.org/p> \"one\" .\n\
                    <https://example.org/a> <https://example.org/p> \"two\" .\n";

/// Imports `doc` into a branch that already has a commit and into a new branch; both must fail
/// with a syntax error at (`line`, `column`) and leave both branches as they were.
fn assert_syntax_error(doc: &str, format: Format, line: u64, column: u64) {
    let mut repo = repo();
    let main = b("main");
    repo.import(&main, GOOD.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    let head = repo.head(&main).unwrap();
    let branches = repo.branches().unwrap();
    for branch in [main.clone(), b("fresh")] {
        let err = repo.import(&branch, doc.as_bytes(), format, ImportOptions::new()).unwrap_err();
        match &err {
            ImportError::Syntax { line: l, column: c, message, .. } => {
                assert_eq!((*l, *c), (line, column), "{doc:?} as {format}: {message}");
                assert!(!message.is_empty());
            }
            other => panic!("{doc:?} as {format}: expected a syntax error, got {other:?}"),
        }
        assert!(err.to_string().contains(&format!("line {line}, column {column}")), "{err}");
    }
    assert_eq!(repo.head(&main).unwrap(), head, "branch moved");
    assert_eq!(repo.head(&b("fresh")).unwrap(), None, "branch created");
    assert_eq!(repo.branches().unwrap(), branches);
    assert_eq!(repo.state(&main).unwrap().len(), 2);
}

#[test]
fn bad_iri_is_a_positioned_error() {
    let doc = "@prefix ex: <https://example.org/> .\nex:a ex:p <http://[::1>.\n";
    assert_syntax_error(doc, Format::Turtle, 2, 11);
}

/// The line formats check each distinct IRI and language tag once, after parsing: a malformed
/// one is a term error naming its statement, and changes nothing.
#[test]
fn a_malformed_iri_or_tag_in_a_line_format_names_its_statement() {
    let cases = [
        ("<https://example.org/a> <https://exa mple.org/p> \"x\" .\n", Format::NTriples),
        ("<https://example.org/a> <https://example.org/p> \"x\"@abcdefghijk .\n", Format::NQuads),
        ("<https://example.org/a> <https://example.org/p> <relative> .\n", Format::NTriples),
        ("<urn:a> <urn:p> \"x\"^^<https://exa mple.org/t> .\n", Format::NTriples),
        ("<urn:a> <urn:p> \"x\" <urn:g\\u0020h> .\n", Format::NQuads),
    ];
    for (statement, format) in cases {
        let mut repo = repo();
        let main = b("main");
        repo.import(&main, GOOD.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
        let head = repo.head(&main).unwrap();
        let doc = format!("{GOOD}{statement}{GOOD}");
        let err = repo.import(&main, doc.as_bytes(), format, ImportOptions::new()).unwrap_err();
        match &err {
            ImportError::Term {
                statement: 3,
                source: TermError::InvalidIri { .. } | TermError::InvalidLanguageTag { .. },
                ..
            } => {}
            other => panic!("{statement:?} as {format}: expected a term error, got {other:?}"),
        }
        assert!(err.to_string().starts_with("statement 3 "), "{err}");
        assert_eq!(repo.head(&main).unwrap(), head, "branch moved");
        assert_eq!(repo.state(&main).unwrap().len(), 2);
    }
}

/// What the line formats' lenient parse would let through is refused all the same: a line
/// end inside a string (at its opening quote), a string opened by a single quote, and a
/// Turtle long string.
#[test]
fn the_line_formats_refuse_what_only_turtle_allows() {
    for format in [Format::NTriples, Format::NQuads] {
        let doc = format!("{GOOD}<urn:a> <urn:p> \"two\nlines\" .\n");
        assert_syntax_error(&doc, format, 3, 17);
        let doc = format!("{GOOD}<urn:a> <urn:p> \"two\r\nlines\" .\n");
        assert_syntax_error(&doc, format, 3, 17);
        let doc = format!("{GOOD}<urn:a> <urn:p> 'single' .\n");
        assert_syntax_error(&doc, format, 3, 17);
        let doc = format!("{GOOD}<urn:a> <urn:p> \"\"\"long\nstring\"\"\" .\n");
        assert_syntax_error(&doc, format, 3, 19);
    }
}

#[test]
fn unterminated_literal_is_a_positioned_error() {
    let doc = format!("{GOOD}<https://example.org/a> <https://example.org/p> \"open .\n");
    assert_syntax_error(&doc, Format::NTriples, 3, 49);
}

#[test]
fn bad_escape_is_a_positioned_error() {
    let doc = format!("{GOOD}<https://example.org/a> <https://example.org/p> \"a\\qb\" .\n");
    assert_syntax_error(&doc, Format::NQuads, 3, 51);
    // At the backslash that starts the escape.
    let doc = "<https://example.org/a> <https://example.org/p\\u00> \"x\" .\n";
    assert_syntax_error(doc, Format::NTriples, 1, 47);
}

#[test]
fn truncated_file_is_a_positioned_error() {
    // Cut in the middle of the last statement (no closing quote, no final dot).
    let doc = format!("{GOOD}<https://example.org/a> <https://example.org/p> \"cut");
    assert_syntax_error(&doc, Format::NTriples, 3, 49);
    // Cut after the object: the final dot is missing.
    let doc = format!("{GOOD}<https://example.org/a> <https://example.org/p> \"cut\"");
    assert_syntax_error(&doc, Format::NTriples, 3, 54);
    let doc = "@prefix ex: <https://example.org/> .\nex:a ex:p [ ex:q \"x\" ;";
    assert_syntax_error(doc, Format::Turtle, 2, 23);
}

#[test]
fn wrong_format_is_a_positioned_error() {
    // Turtle read as N-Triples.
    let turtle = "@prefix ex: <https://example.org/> .\nex:a ex:p ex:b .\n";
    assert_syntax_error(turtle, Format::NTriples, 1, 1);
    // N-Quads (with a graph name) read as N-Triples.
    let nquads = format!("{GOOD}<urn:a> <urn:p> <urn:o> <urn:g> .\n");
    assert_syntax_error(&nquads, Format::NTriples, 3, 25);
    // JSON-LD read as Turtle.
    assert_syntax_error("{\"@id\": \"urn:a\"}\n", Format::Turtle, 1, 1);
}

#[test]
fn a_term_the_model_rejects_is_a_typed_error_with_its_statement_number() {
    let long = "x".repeat(llmkg_federation_core::MAX_TERM_LEN + 1);
    let doc = format!("{GOOD}<urn:a> <urn:p> \"{long}\" .\n");
    let mut repo = repo();
    let err = repo.import(&b("main"), doc.as_bytes(), Format::NTriples, ImportOptions::new());
    match err.unwrap_err() {
        // Positioned where the input had been read to: this small document is read whole.
        ImportError::Term {
            statement: 3,
            line: 4,
            column: 1,
            source: TermError::TooLong { .. },
            ..
        } => {}
        other => panic!("expected a Term error for statement 3, got {other:?}"),
    }
    assert_eq!(repo.head(&b("main")).unwrap(), None);
}

#[test]
fn importing_twice_is_a_no_op_and_replace_records_removals() {
    let mut repo = repo();
    let main = b("main");
    let first =
        repo.import(&main, GOOD.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    assert_eq!((first.added, first.removed, first.statements), (2, 0, 2));
    let head = repo.head(&main).unwrap();
    assert_eq!(first.commit, head);
    let again =
        repo.import(&main, GOOD.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    assert_eq!((again.commit, again.added), (None, 0));
    assert_eq!(repo.head(&main).unwrap(), head);

    // A new release: one triple kept, one dropped, one new.
    let release = "<https://example.org/a> <https://example.org/p> \"one\" .\n\
                   <https://example.org/a> <https://example.org/p> \"three\" .\n";
    let added = repo.import(&main, release.as_bytes(), Format::NTriples, ImportOptions::new());
    assert_eq!(added.unwrap().added, 1);
    assert_eq!(repo.state(&main).unwrap().len(), 3);
    let options = ImportOptions::new().mode(ImportMode::Replace).message("release 2");
    let replaced = repo.import(&main, release.as_bytes(), Format::NTriples, options).unwrap();
    assert_eq!((replaced.added, replaced.removed), (0, 1));
    let commit = repo.load_commit(replaced.commit.unwrap()).unwrap();
    assert_eq!(commit.commit().message(), "release 2");
    assert_eq!(repo.state(&main).unwrap().len(), 2);
    // Any commit can be exported, not only a branch head (materialized and verified).
    let mut out = Vec::new();
    repo.export(first.commit.unwrap(), &mut out, Format::NTriples, &ExportOptions::new()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), GOOD);
    // Empty input into a missing branch creates nothing.
    let empty = repo.import(&b("none"), &b""[..], Format::Turtle, ImportOptions::new()).unwrap();
    assert_eq!(empty.commit, None);
    assert_eq!(repo.head(&b("none")).unwrap(), None);
}

const TURTLE: &str = r#"@prefix ex: <https://example.org/> .
ex:alice ex:address [ ex:city "Berlin" ; ex:geo [ ex:lat "52.5" ] ] ;
    ex:tags ( "a" "b" "c" ) ;
    ex:knows _:bob .
_:bob ex:name "Bob" ; ex:friend [ ex:name "Carol" ] .
"#;

#[test]
fn anonymous_turtle_blank_nodes_get_stable_labels() {
    let mut repo = repo();
    let main = b("main");
    let first =
        repo.import(&main, TURTLE.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap();
    assert_eq!(first.added, 15);
    // The parser invents random ids for [] and ( ); the importer's labels do not depend on
    // them: a second import is a no-op.
    let again =
        repo.import(&main, TURTLE.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap();
    assert_eq!(again.commit, None);
    // The labelled node keeps its label; the others are anon-<doc>-<n>.
    let labels: std::collections::BTreeSet<String> = repo
        .state(&main)
        .unwrap()
        .iter()
        .flat_map(|t| [t.subject.clone(), t.object.clone()])
        .filter_map(|t| match t {
            Term::Blank(b) => Some(b.label().to_owned()),
            _ => None,
        })
        .collect();
    assert!(labels.contains("bob"), "{labels:?}");
    assert_eq!(labels.iter().filter(|l| l.starts_with("anon-")).count(), 6, "{labels:?}");
    // Another document with the same shape gets other labels: no accidental sharing.
    let other = TURTLE.replace("Carol", "Dave");
    let mut repo2 = self::repo();
    repo2.import(&main, other.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap();
    let other_labels: std::collections::BTreeSet<String> = repo2
        .state(&main)
        .unwrap()
        .iter()
        .filter_map(|t| match t.subject {
            Term::Blank(b) if b.label().starts_with("anon-") => Some(b.label().to_owned()),
            _ => None,
        })
        .collect();
    assert!(labels.is_disjoint(&other_labels));

    // Export and re-import in every format: the same root.
    let expected = root(&mut repo, &main);
    let head = repo.head(&main).unwrap().unwrap();
    for format in Format::ALL {
        let mut out = Vec::new();
        repo.export(head, &mut out, format, &ExportOptions::new()).unwrap();
        let branch = b(format.extension());
        repo.import(&branch, out.as_slice(), format, ImportOptions::new()).unwrap();
        assert_eq!(root(&mut repo, &branch), expected, "{format}");
    }
}

#[test]
fn scoped_blank_nodes_keep_documents_apart_and_scoping_is_idempotent() {
    let doc = "_:b0 <urn:p> \"x\" .\n";
    let mut repo = repo();
    let main = b("main");
    let scope = |s: &str| ImportOptions::new().blank_nodes(BlankNodeScope::Named(s.into()));
    repo.import(&main, doc.as_bytes(), Format::NTriples, scope("doc-1")).unwrap();
    repo.import(&main, doc.as_bytes(), Format::NTriples, scope("doc-2")).unwrap();
    assert_eq!(repo.state(&main).unwrap().len(), 2, "two documents, two blank nodes");
    let again = repo.import(&main, doc.as_bytes(), Format::NTriples, scope("doc-1")).unwrap();
    assert_eq!(again.commit, None);
    // Exported labels carry the prefix; importing the export under the same scope keeps them.
    let head = repo.head(&main).unwrap().unwrap();
    let mut out = Vec::new();
    repo.export(head, &mut out, Format::NTriples, &ExportOptions::new()).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.lines().all(|l| l.starts_with("_:") && l.contains("_b0 ")), "{text}");
    let again = repo.import(&main, out.as_slice(), Format::NTriples, ImportOptions::new());
    assert_eq!(again.unwrap().commit, None);
    // Under the scope of one of the documents, its own nodes keep their labels and the other
    // document's nodes are scoped again (they come from another document).
    let again = repo.import(&main, out.as_slice(), Format::NTriples, scope("doc-1")).unwrap();
    assert_eq!((again.added, repo.state(&main).unwrap().len()), (1, 3));
    let mut single = self::repo();
    single.import(&main, doc.as_bytes(), Format::NTriples, scope("doc-1")).unwrap();
    let head = single.head(&main).unwrap().unwrap();
    let mut out = Vec::new();
    single.export(head, &mut out, Format::NTriples, &ExportOptions::new()).unwrap();
    let again = single.import(&main, out.as_slice(), Format::NTriples, scope("doc-1")).unwrap();
    assert_eq!(again.commit, None);
}

const NQUADS: &str = "<urn:a> <urn:p> \"default\" .\n\
                      <urn:a> <urn:p> \"one\" .\n\
                      <urn:a> <urn:p> \"one\" <https://publisher-1.example/> .\n\
                      _:x <urn:p> \"two\" <https://publisher-2.example/> .\n\
                      _:x <urn:p> \"one\" <https://publisher-1.example/> .\n";

#[test]
fn named_graphs_split_into_per_organization_contributions() {
    let p1 = GraphName::named("https://publisher-1.example/").unwrap();
    let p2 = GraphName::named("https://publisher-2.example/").unwrap();
    let options = ImportOptions::new().blank_nodes(BlankNodeScope::Graph);
    let mut dataset = rdf::read(NQUADS.as_bytes(), Format::NQuads, options).unwrap();
    assert_eq!(
        dataset.graph_names().cloned().collect::<Vec<_>>(),
        [GraphName::Default, p1.clone(), p2.clone()]
    );
    assert_eq!(dataset.statements(), 5);
    // Graph-scoped blank nodes: _:x of publisher 1 is not _:x of publisher 2.
    let one = dataset.take_graph(&p1).unwrap();
    let two = dataset.take_graph(&p2).unwrap();
    assert_eq!((one.len(), two.len()), (2, 1));
    assert_ne!(one[1].subject(), two[0].subject());

    // Each graph becomes one organization's branch, in its own repository.
    let mut org1 = repo();
    let report = org1.import_triples(&b("publisher-1"), one, ImportMode::Add, "import").unwrap();
    assert_eq!(report.added, 2);

    // Selecting one graph in a direct import skips the others.
    let mut repo = repo();
    let options = ImportOptions::new().graphs(GraphSelection::Only(p2));
    let report = repo.import(&b("p2"), NQUADS.as_bytes(), Format::NQuads, options).unwrap();
    assert_eq!((report.triples, report.skipped), (1, 4));
    let report = repo.import(&b("all"), NQUADS.as_bytes(), Format::NQuads, ImportOptions::new());
    assert_eq!(report.unwrap().triples, 4, "<urn:a> <urn:p> \"one\" is in two graphs");

    // Export into a chosen graph.
    let head = repo.head(&b("p2")).unwrap().unwrap();
    let mut out = Vec::new();
    let options = ExportOptions::new().graph(p1);
    repo.export(head, &mut out, Format::NQuads, &options).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "_:x <urn:p> \"two\" <https://publisher-1.example/> .\n"
    );
}

#[test]
fn progress_is_reported_at_a_bounded_rate_and_at_the_end() {
    let mut doc = String::new();
    for i in 0..20_000 {
        doc.push_str(&format!(
            "<https://example.org/s{i}> <https://example.org/p> \"value {i}\" .\n"
        ));
    }
    let mut seen: Vec<Progress> = Vec::new();
    let options = ImportOptions::new().on_progress(|p| seen.push(p));
    let report = repo().import(&b("main"), doc.as_bytes(), Format::NTriples, options).unwrap();
    assert_eq!(report.bytes_read, doc.len() as u64);
    assert!(seen.len() >= 3 && seen.len() <= 2 + doc.len() / (256 * 1024), "{}", seen.len());
    assert!(seen.windows(2).all(|w| w[0].bytes_read <= w[1].bytes_read));
    let last = seen.last().unwrap();
    assert_eq!((last.bytes_read, last.statements), (doc.len() as u64, 20_000));
}

#[test]
fn relative_iris_resolve_against_the_base() {
    let base = llmkg_federation_core::Iri::new("https://example.org/dir/").unwrap();
    let options = ImportOptions::new().base_iri(base);
    let dataset = rdf::read("<a> <p> <../b> .".as_bytes(), Format::Turtle, options).unwrap();
    let triples = dataset.into_triples();
    assert_eq!(
        triples[0].to_string(),
        "<https://example.org/dir/a> <https://example.org/dir/p> <https://example.org/b> ."
    );
    // Without a base, a relative IRI is a syntax error.
    let err = rdf::read("<a> <p> <b> .".as_bytes(), Format::Turtle, ImportOptions::new());
    assert!(matches!(err, Err(ImportError::Syntax { line: 1, column: 1, .. })), "{err:?}");
}

/// In the line formats an escaped surrogate pair is the character it encodes (as documented);
/// a lone surrogate is a syntax error.
#[test]
fn the_line_formats_read_an_escaped_surrogate_pair_as_its_character() {
    for format in [Format::NTriples, Format::NQuads] {
        let doc = "<urn:a> <urn:p> \"\\uD83D\\uDE00\" .\n";
        let dataset = rdf::read(doc.as_bytes(), format, ImportOptions::new()).unwrap();
        let triples = dataset.into_triples();
        let Term::Literal(l) = triples[0].object() else { panic!("not a literal") };
        assert_eq!(l.value(), "\u{1F600}");
        let lone = format!("{GOOD}<urn:a> <urn:p> \"\\uD83D\" .\n");
        let err = rdf::read(lone.as_bytes(), format, ImportOptions::new()).unwrap_err();
        assert!(matches!(err, ImportError::Syntax { line: 3, .. }), "{err:?}");
    }
}
