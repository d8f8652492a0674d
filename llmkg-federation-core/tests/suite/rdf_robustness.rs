#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Import under hostile conditions: awkward or malicious input, readers that fail, a progress
//! callback that panics, a store that refuses the write. Every failure is a typed error (with
//! line and column when the parser gives them), nothing panics, and the branch — and the
//! repository's cached state — is exactly as before.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use llmkg_federation_core::rdf::{
    self, Format, ImportError, ImportLimits, ImportMode, ImportOptions, Limit,
};
use llmkg_federation_core::{
    BranchName, CommitId, ManualClock, MemoryStore, NodeKeypair, ObjectId, OrgId, RepoError,
    Repository, StateRoot, Store, StoreError, Timestamp, WriteBatch,
};

/// A memory store whose writes fail while `fail` is set.
#[derive(Default)]
struct FlakyStore {
    inner: MemoryStore,
    fail: AtomicBool,
}

impl Store for FlakyStore {
    fn object(&self, id: &ObjectId) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.object(id)
    }
    fn contains_object(&self, id: &ObjectId) -> Result<bool, StoreError> {
        self.inner.contains_object(id)
    }
    fn reference(&self, name: &BranchName) -> Result<Option<CommitId>, StoreError> {
        self.inner.reference(name)
    }
    fn references(&self) -> Result<Vec<(BranchName, CommitId)>, StoreError> {
        self.inner.references()
    }
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::backend("disk full"));
        }
        self.inner.write(batch)
    }
}

fn repo() -> Repository<FlakyStore> {
    Repository::new(
        FlakyStore::default(),
        NodeKeypair::from_secret_bytes([7; 32]),
        OrgId::new("acme").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

/// `n` distinct N-Triples statements.
fn ntriples(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| format!("<https://example.org/s{i}> <https://example.org/p> \"{tag} {i}\" .\n"))
        .collect()
}

/// The state root of `doc` imported into an empty repository.
fn fresh_root(doc: &[u8], format: Format) -> StateRoot {
    let mut repo = repo();
    repo.import(&b("main"), doc, format, ImportOptions::new()).unwrap();
    let head = repo.head(&b("main")).unwrap().unwrap();
    repo.load_commit(head).unwrap().commit().state_root()
}

/// What a branch looks like: its head, and the number of triples of its (cached) state.
fn snapshot(repo: &mut Repository<FlakyStore>, branch: &BranchName) -> (Option<CommitId>, usize) {
    let head = repo.head(branch).unwrap();
    let len = if head.is_some() { repo.state(branch).unwrap().len() } else { 0 };
    (head, len)
}

/// After a failed import the branch is unchanged, its cached state agrees with a state
/// rebuilt from the store, and a later import works as on a repository that never failed.
fn assert_untouched(
    repo: &mut Repository<FlakyStore>,
    branch: &BranchName,
    before: (Option<CommitId>, usize),
) {
    assert_eq!(snapshot(repo, branch), before);
    if let Some(head) = before.0 {
        let cached = repo.state(branch).unwrap().triples();
        assert_eq!(repo.materialize(head).unwrap().triples(), cached);
    }
    let next = ntriples(3, "after");
    let report = repo.import(branch, next.as_bytes(), Format::NTriples, ImportOptions::new());
    assert_eq!(report.unwrap().added, 3);
    let head = repo.head(branch).unwrap().unwrap();
    let root = repo.load_commit(head).unwrap().commit().state_root();
    assert_eq!(repo.materialize(head).unwrap().state_root(), root);
}

/// A reader that hands out `data` in reads of at most 1000 bytes and then fails, or is
/// interrupted once every few reads, or claims more bytes than the buffer holds.
struct Hostile {
    data: Vec<u8>,
    pos: usize,
    reads: usize,
    behaviour: Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    FailAfter(usize),
    InterruptEvery(usize),
    OverReport,
}

impl Hostile {
    fn new(data: impl Into<Vec<u8>>, behaviour: Behaviour) -> Self {
        Self { data: data.into(), pos: 0, reads: 0, behaviour }
    }
}

impl Read for Hostile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        match self.behaviour {
            Behaviour::FailAfter(bytes) if self.pos >= bytes => {
                return Err(std::io::Error::other("connection reset"));
            }
            Behaviour::InterruptEvery(k) if self.reads.is_multiple_of(k) => {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            Behaviour::OverReport if self.pos > 0 => return Ok(buf.len() + 1),
            _ => {}
        }
        let n = buf.len().min(1000).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_failing_reader_leaves_the_branch_and_its_cached_state_unchanged() {
    let doc = ntriples(20_000, "v"); // about 1.3 MB: several progress reports, bulk path
    for format in Format::ALL {
        for existing in [false, true] {
            let mut repo = repo();
            let main = b("main");
            if existing {
                let first = ntriples(10, "first");
                repo.import(&main, first.as_bytes(), Format::NTriples, ImportOptions::new())
                    .unwrap();
            }
            let before = snapshot(&mut repo, &main);
            let mut calls = 0;
            let options = ImportOptions::new().on_progress(|_| calls += 1);
            let reader = Hostile::new(doc.clone(), Behaviour::FailAfter(doc.len() - 100));
            let err = repo.import(&main, reader, format, options).unwrap_err();
            assert!(
                matches!(&err, ImportError::Io(e) if e.to_string() == "connection reset"),
                "{format}: {err:?}"
            );
            assert!(calls >= 4, "{format}: progress reported {calls} times before the failure");
            assert_untouched(&mut repo, &main, before);
        }
    }
}

#[test]
fn interrupted_reads_are_retried() {
    let doc = ntriples(500, "v");
    for format in Format::ALL {
        let mut repo = repo();
        let reader = Hostile::new(doc.clone(), Behaviour::InterruptEvery(3));
        let report = repo.import(&b("main"), reader, format, ImportOptions::new()).unwrap();
        assert_eq!((report.added, report.bytes_read), (500, doc.len() as u64), "{format}");
        let head = repo.head(&b("main")).unwrap().unwrap();
        let root = repo.load_commit(head).unwrap().commit().state_root();
        assert_eq!(root, fresh_root(doc.as_bytes(), format), "{format}");
    }
}

#[test]
fn a_reader_claiming_more_bytes_than_it_was_given_is_an_io_error() {
    let doc = ntriples(50, "v");
    for format in Format::ALL {
        let mut repo = repo();
        let reader = Hostile::new(doc.clone(), Behaviour::OverReport);
        let err = repo.import(&b("main"), reader, format, ImportOptions::new()).unwrap_err();
        assert!(
            matches!(&err, ImportError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData),
            "{format}: {err:?}"
        );
        assert_untouched(&mut repo, &b("main"), (None, 0));
    }
}

#[test]
fn a_panicking_progress_callback_leaves_the_branch_unchanged() {
    let mut repo = repo();
    let main = b("main");
    repo.import(&main, ntriples(5, "first").as_bytes(), Format::NTriples, ImportOptions::new())
        .unwrap();
    let before = snapshot(&mut repo, &main);
    let doc = ntriples(10_000, "v");
    let result = catch_unwind(AssertUnwindSafe(|| {
        let options = ImportOptions::new().on_progress(|p| {
            if p.statements > 0 {
                panic!("callback gave up");
            }
        });
        repo.import(&main, doc.as_bytes(), Format::NTriples, options)
    }));
    assert!(result.is_err(), "the callback's panic propagates");
    assert_untouched(&mut repo, &main, before);
}

#[test]
fn a_failed_commit_leaves_the_branch_and_its_cached_state_unchanged() {
    let doc = ntriples(2_000, "v");
    let mut repo = repo();
    let main = b("main");
    // Into a new branch (bulk path) and into an existing one (per-triple path), in both modes.
    for (existing, mode) in
        [(false, ImportMode::Add), (true, ImportMode::Add), (true, ImportMode::Replace)]
    {
        if existing && repo.head(&main).unwrap().is_none() {
            let first = ntriples(10, "first");
            repo.import(&main, first.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
        }
        let before = snapshot(&mut repo, &main);
        repo.store().fail.store(true, Ordering::SeqCst);
        let options = ImportOptions::new().mode(mode);
        let err = repo.import(&main, doc.as_bytes(), Format::NTriples, options).unwrap_err();
        repo.store().fail.store(false, Ordering::SeqCst);
        assert!(matches!(err, ImportError::Repo(RepoError::Store(StoreError::Backend(_)))));
        assert_eq!(snapshot(&mut repo, &main), before);
        if let Some(head) = before.0 {
            let cached = repo.state(&main).unwrap().triples();
            assert_eq!(repo.materialize(head).unwrap().triples(), cached);
        }
    }
    let now = snapshot(&mut repo, &main);
    assert_untouched(&mut repo, &main, now);
}

#[test]
fn a_token_longer_than_the_token_limit_is_a_positioned_error() {
    let doc = format!("<urn:a> <urn:p> \"{}\" .\n", "x".repeat(17 << 20));
    let mut repo = repo();
    let main = b("main");
    repo.import(&main, ntriples(3, "first").as_bytes(), Format::NTriples, ImportOptions::new())
        .unwrap();
    let before = snapshot(&mut repo, &main);
    let err = repo.import(&main, doc.as_bytes(), Format::Turtle, ImportOptions::new());
    // Refused at the token's start, before the parser's buffer fills.
    assert!(
        matches!(
            err,
            Err(ImportError::LimitExceeded {
                limit: Limit::TokenLength,
                max: ImportLimits::MAX_TOKEN_LEN,
                line: 1,
                column: 17,
                offset: 16,
            })
        ),
        "{err:?}"
    );
    assert_untouched(&mut repo, &main, before);
}

#[test]
fn byte_order_mark_line_endings_and_empty_inputs() {
    let doc = "<urn:a> <urn:p> \"x\" .\n<urn:a> <urn:q> [ <urn:r> \"y\" ] .\n";
    let turtle_root = fresh_root(doc.as_bytes(), Format::Turtle);
    // A UTF-8 byte order mark is skipped (the same document, the same anonymous labels).
    let with_bom = format!("\u{feff}{doc}");
    assert_eq!(fresh_root(with_bom.as_bytes(), Format::Turtle), turtle_root);
    let nt = ntriples(3, "v");
    let nt_root = fresh_root(nt.as_bytes(), Format::NTriples);
    for format in [Format::NTriples, Format::NQuads] {
        assert_eq!(fresh_root(format!("\u{feff}{nt}").as_bytes(), format), nt_root);
        // CR LF and lone CR line ends.
        assert_eq!(fresh_root(nt.replace('\n', "\r\n").as_bytes(), format), nt_root);
        assert_eq!(fresh_root(nt.replace('\n', "\r").as_bytes(), format), nt_root);
    }
    // Positions in a document with a byte order mark: columns count characters of the text,
    // the offset counts bytes of the input.
    let err = rdf::read(
        "\u{feff}<urn:a> <urn:p> bad .\n".as_bytes(),
        Format::NTriples,
        ImportOptions::new(),
    )
    .unwrap_err();
    assert!(matches!(err, ImportError::Syntax { line: 1, column: 17, offset: 19, .. }), "{err:?}");

    // Empty input, a lone byte order mark, blanks and comments: no statement, no commit, and
    // no branch is created.
    for format in Format::ALL {
        for input in [&b""[..], b"\xEF\xBB\xBF", b"\xEF\xBB", b" \r\n\t# nothing\n"] {
            let mut repo = repo();
            let report = repo.import(&b("main"), input, format, ImportOptions::new());
            match report {
                Ok(r) => {
                    assert_eq!((r.statements, r.commit), (0, None), "{format} {input:?}");
                    assert_eq!(r.bytes_read, input.len() as u64);
                }
                // Two bytes of a byte order mark are not text.
                Err(ImportError::Syntax { line: 1, column: 1, .. }) if input.len() == 2 => {}
                Err(e) => panic!("{format} {input:?}: {e:?}"),
            }
            assert_eq!(repo.head(&b("main")).unwrap(), None);
        }
    }
}

#[test]
fn invalid_utf8_is_a_positioned_syntax_error() {
    for format in Format::ALL {
        let mut repo = repo();
        let doc = b"<urn:a> <urn:p> \"ok\" .\n<urn:a> <urn:p> \"x\xff\" .\n";
        let err = repo.import(&b("main"), &doc[..], format, ImportOptions::new()).unwrap_err();
        assert!(
            matches!(err, ImportError::Syntax { line: 2, column: 19, .. }),
            "{format}: {err:?}"
        );
        assert_eq!(repo.head(&b("main")).unwrap(), None);
    }
}

#[test]
fn deeply_nested_turtle_does_not_overflow_the_stack() {
    let depth = 100_000;
    let mut nested = String::from("<urn:s> <urn:p> ");
    nested.push_str(&"[ <urn:p> ".repeat(depth));
    nested.push_str("<urn:o>");
    nested.push_str(&" ]".repeat(depth));
    nested.push_str(" .\n");
    let mut lists = String::from("<urn:s> <urn:p> ");
    lists.push_str(&"( ".repeat(depth));
    lists.push_str(&") ".repeat(depth));
    lists.push_str(".\n");
    // Far deeper than the default nesting limit (see tests/rdf_hostile.rs): raised here to
    // check that the parser itself copes.
    let deep = || ImportOptions::new().limits(ImportLimits::new().max_nesting_depth(200_000));
    for (doc, triples) in [(nested, depth + 1), (lists, 2 * depth - 1)] {
        let dataset = rdf::read(doc.as_bytes(), Format::Turtle, deep()).unwrap();
        assert_eq!(dataset.len(), triples);
        // Unbalanced: a positioned error, not a crash.
        let cut = &doc[..doc.len() / 2];
        let err = rdf::read(cut.as_bytes(), Format::Turtle, deep()).unwrap_err();
        assert!(matches!(err, ImportError::Syntax { line: 1, .. }), "{err:?}");
        // With the default limits: refused at the limit, with its position.
        let err = rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap_err();
        assert!(matches!(err, ImportError::LimitExceeded { line: 1, .. }), "{err:?}");
    }
}

#[test]
fn an_emptied_branch_takes_a_bulk_import_like_a_new_one() {
    // Replace with nothing empties the branch (its cached state keeps the old terms in its
    // dictionary); the next import goes through the bulk path on that state.
    let mut repo = repo();
    let main = b("main");
    let first = ntriples(300, "first");
    repo.import(&main, first.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    let emptied = ImportOptions::new().mode(ImportMode::Replace);
    let report = repo.import(&main, &b""[..], Format::NTriples, emptied).unwrap();
    assert_eq!(report.removed, 300);
    assert!(repo.state(&main).unwrap().is_empty());
    let second = format!("{}{}", ntriples(100, "first"), ntriples(200, "second"));
    repo.import(&main, second.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    let head = repo.head(&main).unwrap().unwrap();
    let root = repo.load_commit(head).unwrap().commit().state_root();
    assert_eq!(root, fresh_root(second.as_bytes(), Format::NTriples));
    // Replaying the history from the store (verifying every root on the way) agrees.
    assert_eq!(repo.materialize(head).unwrap().state_root(), root);
    assert_eq!(repo.state(&main).unwrap().triples(), repo.materialize(head).unwrap().triples());
}
