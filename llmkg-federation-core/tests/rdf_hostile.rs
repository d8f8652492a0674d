#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(unsafe_code)] // the counting global allocator below
//! Import of documents built to exhaust memory: deep nesting of collections and blank-node
//! property lists, and documents with more triples than an import may hold. Each fails with a
//! typed, positioned [`ImportError::LimitExceeded`], leaves the branch unchanged, and the
//! import's peak heap stays under a stated bound (measured by this binary's own counting
//! allocator). Without the nesting bound, 1 MiB of `(` took hundreds of MiB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmkg_federation_core::TermError;
use llmkg_federation_core::rdf::{self, Format, ImportError, ImportLimits, ImportOptions, Limit};
use llmkg_federation_core::{
    BranchName, CommitId, ManualClock, MemoryStore, NodeKeypair, OrgId, Repository, Timestamp,
};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as the new block arriving before the old one leaves, as it may.
        grew(new_size);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests of this binary run one at a time, so that a measured peak is one test's own.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f` and returns its result with the peak of live heap bytes above those live when it
/// started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;

/// The bound asserted on an import's own peak for the hostile documents of 1 MiB (the
/// document itself, allocated before the measurement, is not counted).
const HOSTILE_PEAK_BOUND: usize = 8 * MIB;

fn repo() -> Repository<MemoryStore> {
    Repository::new(
        MemoryStore::new(),
        NodeKeypair::from_secret_bytes([5; 32]),
        OrgId::new("acme").unwrap(),
        ManualClock::new(Timestamp::from_micros(1_700_000_000_000_000)),
    )
}

fn b(name: &str) -> BranchName {
    BranchName::new(name).unwrap()
}

/// A repository whose `main` has one commit; returns it with that commit.
fn repo_with_main() -> (Repository<MemoryStore>, CommitId) {
    let mut repo = repo();
    let doc = "<urn:a> <urn:p> \"kept\" .\n";
    let report =
        repo.import(&b("main"), doc.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap();
    (repo, report.commit.unwrap())
}

/// Imports `doc` into `main` (which has a commit) and into a new branch, both under a
/// measured peak; both must fail with a limit error, which is returned with the larger peak.
fn hostile(doc: &[u8], format: Format, limits: ImportLimits) -> (ImportError, usize) {
    let (mut repo, head) = repo_with_main();
    let options = || ImportOptions::new().limits(limits);
    let (err, peak) = peak_of(|| repo.import(&b("main"), doc, format, options()).unwrap_err());
    assert_eq!(repo.head(&b("main")).unwrap(), Some(head), "branch unchanged");
    let (fresh, fresh_peak) = peak_of(|| repo.import(&b("new"), doc, format, options()));
    assert_eq!(fresh.unwrap_err().to_string(), err.to_string());
    assert_eq!(repo.head(&b("new")).unwrap(), None, "no branch created");
    (err, peak.max(fresh_peak))
}

fn assert_limit(err: &ImportError, limit: Limit, max: u64, line: u64, column: u64) {
    match err {
        ImportError::LimitExceeded { limit: l, max: m, line: li, column: c, .. } => {
            assert_eq!((*l, *m, *li, *c), (limit, max, line, column), "{err}");
        }
        other => panic!("expected a {limit} limit error, got {other:?}"),
    }
}

#[test]
fn a_mebibyte_of_open_parentheses_is_a_positioned_error_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let doc = vec![b'('; MIB];
    let (err, peak) = hostile(&doc, Format::Turtle, ImportLimits::default());
    let max = u64::from(ImportLimits::DEFAULT_MAX_NESTING_DEPTH);
    println!("1 MiB of '(': {err}; peak {peak} bytes (bound {HOSTILE_PEAK_BOUND})");
    assert!(peak < HOSTILE_PEAK_BOUND, "peak {peak} bytes");
    assert_limit(&err, Limit::NestingDepth, max, 1, max + 1);
}

#[test]
fn a_mebibyte_of_nested_property_lists_is_a_positioned_error_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let head = "<urn:s> <urn:p> ";
    let unit = "[ <urn:p> ";
    let mut doc = String::from(head);
    while doc.len() < MIB {
        doc.push_str(unit);
    }
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, ImportLimits::default());
    let max = ImportLimits::DEFAULT_MAX_NESTING_DEPTH as usize;
    let column = (head.len() + max * unit.len() + 1) as u64;
    println!("1 MiB of nested '[': {err}; peak {peak} bytes (bound {HOSTILE_PEAK_BOUND})");
    assert!(peak < HOSTILE_PEAK_BOUND, "peak {peak} bytes");
    assert_limit(&err, Limit::NestingDepth, max as u64, 1, column);
}

#[test]
fn mixed_nesting_over_several_lines_is_positioned_on_the_right_line() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Three lines (one ending in \r\n), with a BOM, then a line of nested brackets after a
    // two-byte character.
    let mut doc = b"\xEF\xBB\xBF@prefix ex: <urn:ex:> .\r\n# comment (((\nex:s ex:p 1 .\n".to_vec();
    doc.extend_from_slice("ex:s ex:p \"\u{e9}\", ".as_bytes());
    for _ in 0..10_000 {
        doc.extend_from_slice(b"( [ ex:p ");
    }
    let limits = ImportLimits::new().max_nesting_depth(7);
    let (err, _) = hostile(&doc, Format::Turtle, limits);
    // The 8th bracket, the `[` of the 4th `( [ ex:p ` unit: after 15 characters, 3 units of
    // 9 and 2 more.
    assert_limit(&err, Limit::NestingDepth, 7, 4, 15 + 3 * 9 + 2 + 1);
    let ImportError::LimitExceeded { offset, .. } = err else { unreachable!() };
    assert_eq!(doc.get(offset as usize), Some(&b'['));
}

#[test]
fn a_valid_document_nested_to_the_default_depth_imports() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let depth = ImportLimits::DEFAULT_MAX_NESTING_DEPTH as usize;
    let doc = nested(depth);
    let mut repo = repo();
    let report =
        repo.import(&b("main"), doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap();
    assert!(report.commit.is_some());
    // One more level is refused by default.
    let err = repo
        .import(&b("main"), nested(depth + 1).as_bytes(), Format::Turtle, ImportOptions::new())
        .unwrap_err();
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::NestingDepth, .. }), "{err}");
}

/// A valid Turtle document whose object nests `depth` levels: alternately collections and
/// blank-node property lists.
fn nested(depth: usize) -> String {
    let mut doc = String::from("<urn:s> <urn:p> ");
    for level in 0..depth {
        doc.push_str(if level % 2 == 0 { "( " } else { "[ <urn:q> " });
    }
    doc.push_str("\"leaf\"");
    for level in (0..depth).rev() {
        doc.push_str(if level % 2 == 0 { " )" } else { " ]" });
    }
    doc.push_str(" .\n");
    doc
}

#[test]
fn a_raised_limit_lets_a_deeper_valid_document_through() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let doc = nested(2_000);
    let mut repo = repo();
    let err =
        repo.import(&b("main"), doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap_err();
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::NestingDepth, .. }), "{err}");
    assert_eq!(repo.head(&b("main")).unwrap(), None);
    let options = ImportOptions::new().limits(ImportLimits::new().max_nesting_depth(2_000));
    let report = repo.import(&b("main"), doc.as_bytes(), Format::Turtle, options).unwrap();
    assert!(report.commit.is_some());
    assert!(report.triples > 2_000);
}

#[test]
fn brackets_in_strings_iris_comments_and_escapes_do_not_nest() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let many = "(((([[[[".repeat(100);
    let parens = "(".repeat(800);
    let doc = format!(
        "@prefix ex: <urn:ex:> .\n\
         # {many}\n\
         ex:a ex:p \"{many} \\\" {many}\" , '{many}' , \"\" , '' .\n\
         ex:a ex:p \"\"\"{many}\n\"{many}\"\"{many}\\\"\"\"{many}\"\"\" .\n\
         ex:a ex:p '''{many}''{many}''' .\n\
         ex:a ex:p <urn:{parens}> .\n\
         ex:a\\(\\(\\'\\# ex:p ( [ ex:q ex:r ] ) .\n"
    );
    let options = ImportOptions::new().limits(ImportLimits::new().max_nesting_depth(2));
    let dataset = rdf::read(doc.as_bytes(), Format::Turtle, options).unwrap();
    // 3 + 1 + 1 + 1 distinct objects of ex:a (`""` and `''` are the same literal), and the
    // last statement's 4 triples.
    assert_eq!(dataset.len(), 10);
}

#[test]
fn a_document_cut_at_the_limit_never_imports_as_if_it_ended_there() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Everything before the bracket is a complete document.
    let doc = "<urn:a> <urn:p> <urn:b> .\n(";
    let limits = ImportLimits::new().max_nesting_depth(0);
    let (err, _) = hostile(doc.as_bytes(), Format::Turtle, limits);
    assert_limit(&err, Limit::NestingDepth, 0, 2, 1);
    // A syntax error before the limit is reported as such.
    let doc = format!("<urn:a> <urn:p> @@ {}", "(".repeat(1000));
    let err = rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap_err();
    assert!(matches!(err, ImportError::Syntax { line: 1, .. }), "{err}");
}

#[test]
fn too_many_pending_triples_is_an_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limits = ImportLimits::new().max_pending_triples(100);
    // A long object list.
    let objects: Vec<String> = (0..1_000).map(|i| i.to_string()).collect();
    let doc = format!("<urn:s> <urn:p> {} .\n", objects.join(", "));
    let (err, _) = hostile(doc.as_bytes(), Format::Turtle, limits);
    // The whole document had been read when the 101st triple was parsed.
    assert_limit(&err, Limit::PendingTriples, 100, 2, 1);
    // A long collection: two triples per element.
    let doc = format!("<urn:s> <urn:p> ( {} ) .\n", objects.join(" "));
    let (err, _) = hostile(doc.as_bytes(), Format::Turtle, limits);
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::PendingTriples, .. }));
    // A long `;` chain of blank nodes.
    let doc = format!("<urn:s> {} .\n", vec!["<urn:p> [ <urn:q> 1 ]"; 1_000].join(" ; "));
    let (err, _) = hostile(doc.as_bytes(), Format::Turtle, limits);
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::PendingTriples, .. }));
    // N-Triples too; exactly the limit is fine.
    let doc: String = (0..101).map(|i| format!("<urn:s> <urn:p> \"{i}\" .\n")).collect();
    let (err, _) = hostile(doc.as_bytes(), Format::NTriples, limits);
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::PendingTriples, .. }));
    let exactly: String = doc.lines().take(100).map(|l| format!("{l}\n")).collect();
    let dataset =
        rdf::read(exactly.as_bytes(), Format::NTriples, ImportOptions::new().limits(limits))
            .unwrap();
    assert_eq!(dataset.len(), 100);
}

#[test]
fn a_mebibyte_of_blank_node_chains_stays_bounded_by_the_pending_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let limits = ImportLimits::new().max_pending_triples(10_000);
    let mut doc = String::from("<urn:s> <urn:p> [ <urn:q> [] ]");
    while doc.len() < MIB {
        doc.push_str(", [ <urn:q> [] ]");
    }
    doc.push_str(" .\n");
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, limits);
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::PendingTriples, .. }));
    println!("1 MiB of ', [ <urn:q> [] ]' (limit 10000 triples): {err}; peak {peak} bytes");
    assert!(peak < HOSTILE_PEAK_BOUND, "peak {peak} bytes");
}

#[test]
fn the_limit_is_exact_with_brackets_in_tokens_at_every_level() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Every level holds tokens with brackets that must not count, and the closing side too.
    let tokens = ["\"a(b[c\"", "'''x)]'' ]'''", "<urn:(>", "\"\"\"))\"\"\"", "'\\'('"];
    let in_list = format!("{} # )] ([\n", tokens.join(" "));
    let in_property_list = format!("{} , # )] ([\n", tokens.join(" , "));
    for depth in 1..=12u32 {
        let mut doc = String::from("@prefix ex: <urn:ex:> .\nex:s ex:p ");
        for level in 0..depth {
            doc.push_str(if level % 2 == 0 { "( " } else { "[ ex:q " });
            doc.push_str(if level % 2 == 0 { &in_list } else { &in_property_list });
        }
        doc.push_str("ex:a\\(\\)");
        for level in (0..depth).rev() {
            doc.push_str(if level % 2 == 0 { " )" } else { " , '('  ]" });
        }
        doc.push_str(" .\n");
        let exact = ImportOptions::new().limits(ImportLimits::new().max_nesting_depth(depth));
        rdf::read(doc.as_bytes(), Format::Turtle, exact)
            .unwrap_or_else(|e| panic!("depth {depth}: {e}"));
        let below = ImportOptions::new().limits(ImportLimits::new().max_nesting_depth(depth - 1));
        let err = rdf::read(doc.as_bytes(), Format::Turtle, below).unwrap_err();
        assert!(
            matches!(err, ImportError::LimitExceeded { limit: Limit::NestingDepth, .. }),
            "depth {depth}: {err}"
        );
    }
}

/// A reader producing `head`, then `len` copies of `fill`, then `tail`, without holding them.
struct Generated {
    head: Vec<u8>,
    fill: u8,
    len: usize,
    tail: Vec<u8>,
    at: usize,
}

impl Generated {
    fn new(head: &str, fill: u8, len: usize, tail: &str) -> Self {
        Self { head: head.into(), fill, len, tail: tail.into(), at: 0 }
    }
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        for slot in buf.iter_mut() {
            let i = self.at;
            let (h, f) = (self.head.len(), self.head.len() + self.len);
            *slot = if i < h {
                self.head[i]
            } else if i < f {
                self.fill
            } else if let Some(&b) = self.tail.get(i - f) {
                b
            } else {
                break;
            };
            self.at += 1;
            n += 1;
        }
        Ok(n)
    }
}

/// The bound asserted on the peak of the shapes below under a memory budget of `budget`
/// bytes: the budget, plus what is not charged to it (the parser's buffer, a few blocks of
/// input, the hash sets' spare capacity), which for these documents of at most 2 MiB stays
/// under 3 MiB.
fn budget_bound(budget: usize) -> usize {
    2 * budget + 3 * MIB
}

#[test]
fn many_distinct_blank_node_labels_cross_the_memory_budget_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let budget = MIB;
    let limits = ImportLimits::new().max_memory(budget as u64);
    // As objects: each label is a triple and an entry of the label set.
    let mut doc = String::from("<urn:s> <urn:p> _:b0");
    let mut i = 1;
    while doc.len() < 2 * MIB {
        doc.push_str(&format!(", _:b{i}"));
        i += 1;
    }
    doc.push_str(" .\n");
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, limits);
    println!("2 MiB of distinct labels, budget {budget}: {err}; peak {peak} bytes");
    assert!(peak < budget_bound(budget), "peak {peak} bytes");
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::Memory, line: 1, .. }));
    // Without the budget the same document holds several times its size.
    let (_, unbounded) =
        peak_of(|| rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap().len());
    println!("the same without a budget: peak {unbounded} bytes");
    assert!(unbounded > budget_bound(budget), "the document must be able to cross the bound");

    // In comments, one label a line: the label set alone grows, with no triple; the error is
    // on the line of the label that crossed the budget.
    let budget = 256 * 1024;
    let limits = ImportLimits::new().max_memory(budget as u64);
    let mut doc = String::new();
    let mut line = 0u64;
    while doc.len() < 2 * MIB {
        doc.push_str(&format!("# _:label{line}\n"));
        line += 1;
    }
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, limits);
    println!("2 MiB of labels in comments, budget {budget}: {err}; peak {peak} bytes");
    assert!(peak < budget_bound(budget), "peak {peak} bytes");
    let ImportError::LimitExceeded { limit: Limit::Memory, line, column, .. } = err else {
        panic!("expected a memory limit error, got {err:?}")
    };
    // A label is recorded at the byte after it: the line's end.
    let text = doc.lines().nth(line as usize - 1).unwrap();
    assert_eq!(column as usize, text.len() + 1, "{text}");
}

#[test]
fn many_prefix_declarations_cross_the_memory_budget_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let budget = 256 * 1024;
    let limits = ImportLimits::new().max_memory(budget as u64);
    for (what, keyword, same_name) in [
        ("distinct @prefix", "@prefix", false),
        ("distinct PREFIX", "PREFIX", false),
        ("redefined @prefix", "@prefix", true),
    ] {
        let mut doc = String::new();
        let mut i = 0;
        while doc.len() < 2 * MIB {
            let name = if same_name { "p".to_owned() } else { format!("p{i}") };
            let end = if keyword == "PREFIX" { "" } else { " ." };
            doc.push_str(&format!("{keyword} {name}: <urn:x:{i}:>{end}\n"));
            i += 1;
        }
        let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, limits);
        println!("2 MiB of {what}, budget {budget}: {err}; peak {peak} bytes");
        assert!(peak < budget_bound(budget), "{what}: peak {peak} bytes");
        let ImportError::LimitExceeded { limit: Limit::Memory, line, column, .. } = err else {
            panic!("{what}: expected a memory limit error, got {err:?}")
        };
        // At the `>` that ends the declared IRI.
        let text = doc.lines().nth(line as usize - 1).unwrap();
        assert_eq!(text.chars().nth(column as usize - 1), Some('>'), "{what}: {text}");
    }
    // A prefixed name that merely reads `prefix` is no declaration.
    let doc = "@prefix prefix: <urn:x:> .\nprefix:prefix prefix:prefix <urn:prefix> .\n";
    let limits = ImportLimits::new().max_memory(4096);
    assert_eq!(
        rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new().limits(limits))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_long_object_list_crosses_the_memory_budget_before_the_triple_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let budget = MIB;
    let limits = ImportLimits::new().max_memory(budget as u64);
    let value = "v".repeat(200);
    let mut doc = String::from("<urn:s> <urn:p> ");
    let mut i = 0;
    while doc.len() < 2 * MIB {
        doc.push_str(&format!("\"{value}{i}\" ; <urn:p{i}> "));
        i += 1;
    }
    doc.push_str("1 .\n");
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, limits);
    println!("2 MiB of a ';'/',' chain, budget {budget}: {err}; peak {peak} bytes");
    assert!(peak < budget_bound(budget), "peak {peak} bytes");
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::Memory, line: 1, .. }));
    // N-Triples too.
    let doc: String = (0..8_000).map(|i| format!("<urn:s> <urn:p> \"{value}{i}\" .\n")).collect();
    let (err, peak) = hostile(doc.as_bytes(), Format::NTriples, limits);
    println!("{} bytes of N-Triples, budget {budget}: {err}; peak {peak} bytes", doc.len());
    assert!(peak < budget_bound(budget), "peak {peak} bytes");
    assert!(matches!(err, ImportError::LimitExceeded { limit: Limit::Memory, .. }));
}

#[test]
fn long_literals_and_iris_are_refused_at_their_start_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let max = 64 * 1024;
    let limits = ImportLimits::new().max_token_len(max);
    let bound = MIB;
    let long = "x".repeat(2 * MIB);
    for (what, doc, format) in [
        ("literal", format!("<urn:a> <urn:p> 1 .\n<urn:a> <urn:p> \"{long}\" .\n"), Format::Turtle),
        (
            "long literal",
            format!("<urn:a> <urn:p> 1 .\n<urn:a> <urn:p> \"\"\"{long}\"\"\" .\n"),
            Format::Turtle,
        ),
        ("IRI", format!("<urn:a> <urn:p> 1 .\n<urn:a> <urn:p> <urn:{long}> .\n"), Format::Turtle),
        ("prefixed name", format!("@prefix ex: <urn:> .\nex:a ex:p ex:{long} .\n"), Format::Turtle),
        (
            "N-Triples literal",
            format!("<urn:a> <urn:p> \"1\" .\n<urn:a> <urn:p> \"{long}\" .\n"),
            Format::NTriples,
        ),
        (
            "N-Quads graph",
            format!("<urn:a> <urn:p> \"1\" .\n<urn:a> <urn:p> \"1\" <urn:{long}> .\n"),
            Format::NQuads,
        ),
    ] {
        let (err, peak) = hostile(doc.as_bytes(), format, limits);
        println!("a 2 MiB {what}, token limit {max}: {err}; peak {peak} bytes");
        assert!(peak < bound, "{what}: peak {peak} bytes");
        let ImportError::LimitExceeded {
            limit: Limit::TokenLength, line: 2, column, offset, ..
        } = err
        else {
            panic!("{what}: expected a token limit error on line 2, got {err:?}")
        };
        // At the token's first byte.
        assert!(matches!(doc.as_bytes()[offset as usize], b'"' | b'<' | b'e'), "{what}");
        let line_start = doc.find('\n').unwrap() as u64 + 1;
        assert_eq!(column, offset - line_start + 1, "{what}");
    }
}

#[test]
fn a_long_literal_under_the_default_token_limit_is_a_positioned_term_error() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Longer than the core's longest term, shorter than the default token limit.
    let long = "x".repeat(3 * MIB);
    let doc = format!("<urn:a> <urn:p> 1 .\n<urn:a> <urn:p> \"{long}\" .\n");
    let (err, peak) = hostile(doc.as_bytes(), Format::Turtle, ImportLimits::default());
    // The parser's buffer holds the token (up to twice its size as it grows), the literal's
    // value is a copy: about four times the token at most.
    let bound = 4 * 3 * MIB + MIB;
    println!("a 3 MiB literal, default limits: {err}; peak {peak} bytes (bound {bound})");
    assert!(peak < bound, "peak {peak} bytes");
    match err {
        ImportError::Term {
            statement: 2,
            line: 3,
            column: 1,
            source: TermError::TooLong { .. },
            ..
        } => {}
        other => panic!("expected a positioned term error, got {other:?}"),
    }
}

#[test]
fn comments_of_any_length_are_accepted_in_bounded_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 24 MiB of comment on one line: longer than the parser's 16 MiB buffer and than the
    // token limit, generated as it is read.
    let len = 24 * MIB;
    for format in Format::ALL {
        let reader = Generated::new(
            "<urn:a> <urn:p> <urn:o> . # ",
            b'x',
            len,
            "\n<urn:a> <urn:p> <urn:b> .\n",
        );
        let (dataset, peak) = peak_of(|| rdf::read(reader, format, ImportOptions::new()).unwrap());
        println!("{format}: a 24 MiB comment: peak {peak} bytes");
        assert_eq!(dataset.len(), 2, "{format}");
        assert!(peak < MIB, "{format}: peak {peak} bytes");
    }
    // A syntax error after a long comment is at its true position (the parser did not see
    // most of the comment).
    let comment = "\u{e9}".repeat(3 * MIB);
    let doc = format!("<urn:a> <urn:p> <urn:o> .\n#{comment}\n<urn:a> <urn:p> @@ .\n");
    let err = rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap_err();
    // The parser points into `@@` (at its second character); the offset must be that of the
    // same character in the whole input.
    let line_start = doc.rfind("<urn:a>").unwrap() as u64;
    let ImportError::Syntax { line: 3, column, offset, .. } = err else {
        panic!("expected a syntax error on line 3, got {err:?}")
    };
    assert!((17..=18).contains(&column), "{err:?}");
    assert_eq!(offset, line_start + column - 1, "{err:?}");
    // An error at the end of the input, inside a long comment, is on its line.
    let doc = format!("<urn:a> <urn:p> #{comment}");
    let err = rdf::read(doc.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap_err();
    let ImportError::Syntax { line: 1, offset, .. } = err else {
        panic!("expected a syntax error on line 1, got {err:?}")
    };
    assert!(offset <= doc.len() as u64);
}
