//! Streaming import: parse, convert, scope blank nodes, then commit once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;

use oxttl::{NQuadsParser, NTriplesParser, TurtleParseError, TurtleParser};
use thiserror::Error;

use super::{Format, GraphName};
use crate::commit::CommitId;
use crate::repo::{RepoError, Repository};
use crate::store::{BranchName, Store};
use crate::term::{
    BlankNode, ChangeSet, Iri, LanguageTag, Literal, LiteralKind, Term, TermError, Triple,
};

/// Progress is reported each time this many more bytes have been read.
const PROGRESS_EVERY_BYTES: u64 = 256 * 1024;

/// At most this many distinct IRIs are remembered as already validated; past it, further IRIs
/// are validated every time (still correct, only slower).
const IRI_CACHE_LIMIT: usize = 1 << 20;

type Hasher = foldhash::fast::RandomState;

/// How far an import has got; see [`ImportOptions::on_progress`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes read from the input so far.
    pub bytes_read: u64,
    /// Statements (triples or quads) parsed so far.
    pub statements: u64,
}

/// Which graphs of an N-Quads document an import keeps. N-Triples and Turtle documents have
/// only the default graph.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GraphSelection {
    /// Every graph; [`Repository::import`] merges them into the one branch.
    #[default]
    All,
    /// Only this graph; statements in other graphs are counted in
    /// [`ImportReport::skipped`] and otherwise ignored. A graph named by a blank node is
    /// matched by its label as imported, i.e. after a [`BlankNodeScope::Named`] prefix.
    Only(GraphName),
}

/// How blank-node labels are scoped; see the [module documentation](super#blank-nodes).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlankNodeScope {
    /// Labels are kept as written: the same label in the same branch is the same node.
    #[default]
    Branch,
    /// Labels get the prefix derived from this name (for example the document's URL), so
    /// documents imported under different names never share a blank node.
    Named(String),
    /// Labels get the prefix derived from the statement's graph name (N-Quads); labels in
    /// the default graph are kept.
    Graph,
}

/// What an import does to the branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ImportMode {
    /// Add the imported triples to the branch state.
    #[default]
    Add,
    /// Make the branch state exactly the imported triples: triples not in the input are
    /// removed in the same commit.
    Replace,
}

/// Which limit of [`ImportLimits`] an import crossed; see [`ImportError::LimitExceeded`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`ImportLimits::max_nesting_depth`]: collections `( ... )` and blank-node property
    /// lists `[ ... ]` nested too deeply (Turtle).
    NestingDepth,
    /// [`ImportLimits::max_pending_triples`]: too many triples parsed and held for the one
    /// commit an import makes.
    PendingTriples,
    /// [`ImportLimits::max_memory`]: what the import holds while parsing (triples, blank-node
    /// labels, prefixes, caches) grew past the byte budget.
    Memory,
    /// [`ImportLimits::max_token_len`]: a single token (a literal, an IRI, a name; comments
    /// do not count) is too long.
    TokenLength,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::NestingDepth => "nesting depth",
            Limit::PendingTriples => "pending triples",
            Limit::Memory => "memory held (bytes)",
            Limit::TokenLength => "token length (bytes)",
        })
    }
}

/// Bounds on what an import may hold in memory while it parses, so that a hostile document
/// fails with [`ImportError::LimitExceeded`] instead of exhausting memory. Set them with
/// [`ImportOptions::limits`].
///
/// [`max_memory`](Self::max_memory) bounds, in bytes, everything the import accumulates while
/// it parses: the triples held for its commit, the blank-node labels written in the text, the
/// prefixes declared, the importer's caches. What is not counted there is bounded by the
/// other limits: the parser's buffer by [`max_token_len`](Self::max_token_len) (at most twice
/// [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN)), its stack by
/// [`max_nesting_depth`](Self::max_nesting_depth). Comments cost nothing, however long.
///
/// ```
/// use llmkg_federation_core::rdf::{ImportLimits, ImportOptions};
/// let limits = ImportLimits::new()
///     .max_nesting_depth(1024)
///     .max_pending_triples(1_000_000)
///     .max_memory(512 << 20)
///     .max_token_len(1 << 20);
/// assert_eq!(limits.max_nesting_depth, 1024);
/// let options = ImportOptions::new().limits(limits);
/// # drop(options);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportLimits {
    /// How deeply collections `( ... )` and blank-node property lists `[ ... ]` may nest,
    /// counted together (`( [ ( ) ] )` has depth 3). Each open level costs the Turtle parser
    /// several hundred bytes, so without a bound a line of `(` takes hundreds of times its
    /// own size in memory. Only Turtle nests; the count is taken on the bytes as they are
    /// read, ignoring brackets inside strings, IRIs, comments and escapes. Default
    /// [`DEFAULT_MAX_NESTING_DEPTH`](Self::DEFAULT_MAX_NESTING_DEPTH).
    pub max_nesting_depth: u32,
    /// How many triples may be parsed and held before the import's single commit (selected
    /// graphs only, duplicates included). This bounds the memory of the import's result,
    /// and with it of long collections and long `;` / `,` chains, which produce triples
    /// without nesting. Default [`DEFAULT_MAX_PENDING_TRIPLES`](Self::DEFAULT_MAX_PENDING_TRIPLES).
    pub max_pending_triples: u64,
    /// How many bytes the import may hold while parsing: the triples kept for its commit (the
    /// triple values and the text of their terms), the `_:labels` written in a Turtle
    /// document, the prefixes it declares (each declaration counts, redefinitions included),
    /// and the importer's caches of checked IRIs, language tags and anonymous nodes. The count
    /// is an estimate of the heap these take (each string is charged its length plus a
    /// fixed overhead); it is checked as each item is added. Default
    /// [`DEFAULT_MAX_MEMORY`](Self::DEFAULT_MAX_MEMORY).
    pub max_memory: u64,
    /// The longest run of input, in bytes, that contains no whitespace and none of
    /// `, ; ( ) [ ]` outside strings and IRIs: a bound on any single token (a literal with its
    /// quotes, an IRI, a prefixed name; `<a><b>` written without a space counts as one).
    /// Comments are not tokens and may be of any length. The parser buffers a token whole, so
    /// this bounds its buffer. At most [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN) (larger values
    /// are lowered to it); default [`DEFAULT_MAX_TOKEN_LEN`](Self::DEFAULT_MAX_TOKEN_LEN).
    pub max_token_len: u64,
}

impl ImportLimits {
    /// Default of [`max_nesting_depth`](Self::max_nesting_depth): 256 levels, far beyond what
    /// real data uses, and about a hundred KiB of parser state.
    pub const DEFAULT_MAX_NESTING_DEPTH: u32 = 256;
    /// Default of [`max_pending_triples`](Self::max_pending_triples): ten million triples.
    /// A held triple of short terms costs about 300 bytes (a document of `, 1` repeated holds
    /// about a hundred times its size), so this is in the order of a few GiB at most. Larger
    /// documents need a raised limit (or several imports).
    pub const DEFAULT_MAX_PENDING_TRIPLES: u64 = 10_000_000;
    /// Default of [`max_memory`](Self::max_memory): 2 GiB (about seven million triples of
    /// short terms; see [`DEFAULT_MAX_PENDING_TRIPLES`](Self::DEFAULT_MAX_PENDING_TRIPLES)).
    pub const DEFAULT_MAX_MEMORY: u64 = 2 << 30;
    /// The largest [`max_token_len`](Self::max_token_len): 8 MiB, half the parser's 16 MiB
    /// buffer, which then always holds the current line's start and the token together.
    pub const MAX_TOKEN_LEN: u64 = 8 << 20;
    /// Default of [`max_token_len`](Self::max_token_len): [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN),
    /// room for a term of the core's longest length ([`MAX_TERM_LEN`](crate::MAX_TERM_LEN))
    /// even when it is written with escapes.
    pub const DEFAULT_MAX_TOKEN_LEN: u64 = Self::MAX_TOKEN_LEN;

    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`max_nesting_depth`](Self::max_nesting_depth); `u32::MAX` means no bound.
    pub fn max_nesting_depth(mut self, depth: u32) -> Self {
        self.max_nesting_depth = depth;
        self
    }

    /// Sets [`max_pending_triples`](Self::max_pending_triples); `u64::MAX` means no bound.
    pub fn max_pending_triples(mut self, triples: u64) -> Self {
        self.max_pending_triples = triples;
        self
    }

    /// Sets [`max_memory`](Self::max_memory), in bytes; `u64::MAX` means no bound.
    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = bytes;
        self
    }

    /// Sets [`max_token_len`](Self::max_token_len), in bytes, lowered to at most
    /// [`MAX_TOKEN_LEN`](Self::MAX_TOKEN_LEN).
    pub fn max_token_len(mut self, bytes: u64) -> Self {
        self.max_token_len = bytes.min(Self::MAX_TOKEN_LEN);
        self
    }
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self {
            max_nesting_depth: Self::DEFAULT_MAX_NESTING_DEPTH,
            max_pending_triples: Self::DEFAULT_MAX_PENDING_TRIPLES,
            max_memory: Self::DEFAULT_MAX_MEMORY,
            max_token_len: Self::DEFAULT_MAX_TOKEN_LEN,
        }
    }
}

/// Options of [`read`] and [`Repository::import`].
///
/// ```
/// use llmkg_federation_core::rdf::{BlankNodeScope, ImportMode, ImportOptions};
/// let mut reported = 0;
/// let options = ImportOptions::new()
///     .blank_nodes(BlankNodeScope::Named("https://example.org/data.ttl".into()))
///     .mode(ImportMode::Replace)
///     .message("import release 2")
///     .on_progress(|p| reported = p.statements);
/// # drop(options);
/// ```
#[derive(Default)]
pub struct ImportOptions<'a> {
    base_iri: Option<Iri>,
    graphs: GraphSelection,
    blank_nodes: BlankNodeScope,
    mode: ImportMode,
    message: Option<String>,
    progress: Option<Box<dyn FnMut(Progress) + 'a>>,
    limits: ImportLimits,
    parallel: Option<bool>,
}

impl fmt::Debug for ImportOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportOptions")
            .field("base_iri", &self.base_iri)
            .field("graphs", &self.graphs)
            .field("blank_nodes", &self.blank_nodes)
            .field("mode", &self.mode)
            .field("message", &self.message)
            .field("progress", &self.progress.is_some())
            .field("limits", &self.limits)
            .field("parallel", &self.parallel)
            .finish()
    }
}

impl<'a> ImportOptions<'a> {
    /// The defaults: all graphs, labels kept, [`ImportMode::Add`], message `import <format>`,
    /// no base IRI, no progress callback, [`ImportLimits::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The base IRI against which relative IRIs in Turtle are resolved.
    pub fn base_iri(mut self, base: Iri) -> Self {
        self.base_iri = Some(base);
        self
    }

    /// Which graphs to import.
    pub fn graphs(mut self, graphs: GraphSelection) -> Self {
        self.graphs = graphs;
        self
    }

    /// How to scope blank-node labels.
    pub fn blank_nodes(mut self, scope: BlankNodeScope) -> Self {
        self.blank_nodes = scope;
        self
    }

    /// Add to the branch, or replace its state.
    pub fn mode(mut self, mode: ImportMode) -> Self {
        self.mode = mode;
        self
    }

    /// The commit message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Bounds on what the import may hold while parsing; see [`ImportLimits`].
    pub fn limits(mut self, limits: ImportLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Calls `callback` each time another 256 KiB of input have been read, and once when the
    /// input is exhausted. It runs while parsing, before anything is committed: if it panics,
    /// the panic propagates and the branch is unchanged. It runs on the calling thread.
    pub fn on_progress(mut self, callback: impl FnMut(Progress) + 'a) -> Self {
        self.progress = Some(Box::new(callback));
        self
    }

    /// Whether N-Triples and N-Quads are scanned (positions, limits, comments) on a second
    /// thread, in pieces, while the calling thread reads the input and parses and converts
    /// the scanned pieces. The default is to, when the machine has two or more cores. Turtle
    /// is always read on the calling thread alone, and so is any document when the system
    /// refuses to start a thread.
    ///
    /// The outcome is the same either way: the same triples, the same errors at the same
    /// positions, the same limits. Two things differ: a progress report may count fewer
    /// statements for the bytes read (the reading runs up to 256 KiB ahead of the parsing),
    /// and the position of an [`ImportError::Term`], or of a limit crossed by a statement
    /// (how far the input had been read), may lie up to 32 KiB further on. The pieces in flight
    /// between the threads, at most 256 KiB, are not charged to
    /// [`ImportLimits::max_memory`]. Everything the import keeps is allocated on the calling
    /// thread.
    pub fn parallel(mut self, parallel: bool) -> Self {
        self.parallel = Some(parallel);
        self
    }
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ImportReport {
    /// Bytes read from the input.
    pub bytes_read: u64,
    /// Statements parsed (in all graphs); for [`Repository::import_triples`], the distinct
    /// triples given.
    pub statements: u64,
    /// Statements in graphs that were not selected.
    pub skipped: u64,
    /// Distinct triples imported.
    pub triples: usize,
    /// Triples the commit added (absent from the branch before).
    pub added: usize,
    /// Triples the commit removed ([`ImportMode::Replace`] only).
    pub removed: usize,
    /// The commit made, or `None` if the import changed nothing (no commit was made).
    pub commit: Option<CommitId>,
}

/// An import failed. In every case **nothing was committed and the branch is unchanged**.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The input is not valid in the given format (which includes input in another format).
    /// Branch unchanged.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// Line of the error, from 1.
        line: u64,
        /// Column of the error, from 1, in characters.
        column: u64,
        /// Byte offset of the error, from 0.
        offset: u64,
        /// The parser's explanation.
        message: String,
    },
    /// A statement is valid RDF but one of its terms is rejected by the core model (for
    /// example a value longer than [`MAX_TERM_LEN`](crate::MAX_TERM_LEN)); or, in N-Triples
    /// and N-Quads, an IRI or language tag is malformed (those formats check each distinct
    /// IRI and tag once, after the statement is parsed). Branch unchanged.
    ///
    /// The position is how far the input had been read when the parser returned the
    /// statement: at or after the statement's end, by less than the parser's last read
    /// (see [`ImportError::LimitExceeded`]).
    #[error("statement {statement} (input read to line {line}, column {column}): {source}")]
    Term {
        /// The rejected statement's number, from 1, in document order (0 for a label the
        /// importer derives after parsing, which cannot actually be rejected).
        statement: u64,
        /// Line, from 1.
        line: u64,
        /// Column, from 1, in characters.
        column: u64,
        /// Byte offset, from 0 (a byte order mark included).
        offset: u64,
        /// Why the term was rejected.
        source: TermError,
    },
    /// The base IRI was rejected by the parser. Branch unchanged.
    #[error("invalid base IRI {iri}: {reason}")]
    BaseIri {
        /// The base IRI.
        iri: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The document crossed one of the [`ImportLimits`] set with [`ImportOptions::limits`].
    /// Branch unchanged.
    ///
    /// For [`Limit::NestingDepth`] the position is that of the bracket that opened one level
    /// too many; for [`Limit::TokenLength`], the start of the long token; for
    /// [`Limit::Memory`] crossed by a label or a prefix declaration, the byte that completed
    /// it. For [`Limit::PendingTriples`], and [`Limit::Memory`] crossed by a triple, it is how
    /// far the input had been read when the triple was parsed; the parser reads ahead in
    /// blocks, so it may be past that triple (by at most a block).
    #[error("import limit exceeded at line {line}, column {column}: {limit} above {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The limit's configured value.
        max: u64,
        /// Line, from 1.
        line: u64,
        /// Column, from 1, in characters.
        column: u64,
        /// Byte offset, from 0 (a byte order mark included).
        offset: u64,
    },
    /// The reader returned an error (reads that are [`Interrupted`](std::io::ErrorKind::Interrupted)
    /// are retried), or claimed to have read more bytes than it was given room for.
    /// Branch unchanged.
    #[error("reading the input failed: {0}")]
    Io(#[from] std::io::Error),
    /// The commit failed; see [`RepoError`] (which says what state it leaves). Unless that
    /// variant says otherwise, the branch is unchanged.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

impl ImportError {
    /// Converts a parser error; `input` tells whether an I/O error came from the caller's
    /// reader (otherwise it is the parser's buffer limit), `scanner` maps the parser's
    /// positions back to the input's (the parser does not see a byte order mark nor the
    /// dropped tails of long comments).
    /// `token` is where the token being read began when the parser stopped.
    fn from_parse(
        e: TurtleParseError,
        input: &InputState,
        scanner: &Scanner,
        token: Position,
    ) -> Self {
        if let (TurtleParseError::Io(_), Some(hit)) = (&e, input.limit.get()) {
            return hit.error();
        }
        match e {
            TurtleParseError::Syntax(e) => {
                let at = e.location().start;
                let at = scanner.input_position(Position {
                    line: at.line,
                    column: at.column,
                    offset: at.offset + input.bom,
                });
                ImportError::Syntax {
                    line: at.line + 1,
                    column: at.column + 1,
                    offset: at.offset,
                    message: e.message().to_owned(),
                }
            }
            // oxttl reports its buffer limit as `OutOfMemory` (the caller's reader failing
            // with that kind stays an I/O error). The token limit keeps the buffer below it;
            // should it be reached all the same, it is that limit, at the current token.
            TurtleParseError::Io(e)
                if e.kind() == std::io::ErrorKind::OutOfMemory && !input.reader_failed.get() =>
            {
                LimitHit { limit: Limit::TokenLength, max: scanner.max_token, at: token }.error()
            }
            TurtleParseError::Io(e) => ImportError::Io(e),
        }
    }

    /// A term error for statement `statement`, positioned where the input had been read to.
    fn term(statement: u64, at: Position, source: TermError) -> Self {
        ImportError::Term {
            statement,
            line: at.line + 1,
            column: at.column + 1,
            offset: at.offset,
            source,
        }
    }
}

/// The triples of a parsed document, grouped by graph name, each graph sorted and free of
/// duplicates. Made by [`read`].
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    graphs: Vec<(GraphName, Vec<Triple>)>,
    bytes_read: u64,
    statements: u64,
    skipped: u64,
}

impl Dataset {
    /// The graph names, sorted (the default graph first).
    pub fn graph_names(&self) -> impl Iterator<Item = &GraphName> {
        self.graphs.iter().map(|(g, _)| g)
    }

    /// Every graph with its triples (sorted), in graph-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&GraphName, &[Triple])> {
        self.graphs.iter().map(|(g, t)| (g, t.as_slice()))
    }

    /// The triples of graph `name`, sorted.
    pub fn graph(&self, name: &GraphName) -> Option<&[Triple]> {
        self.position(name).and_then(|i| self.graphs.get(i)).map(|(_, t)| t.as_slice())
    }

    /// Removes graph `name` and returns its triples (sorted).
    pub fn take_graph(&mut self, name: &GraphName) -> Option<Vec<Triple>> {
        let i = self.position(name)?;
        Some(self.graphs.remove(i).1)
    }

    fn position(&self, name: &GraphName) -> Option<usize> {
        self.graphs.binary_search_by(|(g, _)| g.cmp(name)).ok()
    }

    /// Number of triples, summed over graphs.
    pub fn len(&self) -> usize {
        self.graphs.iter().map(|(_, t)| t.len()).sum()
    }

    /// True if no graph holds a triple.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes read from the input.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Statements parsed, in all graphs.
    pub fn statements(&self) -> u64 {
        self.statements
    }

    /// Statements in graphs not selected by [`ImportOptions::graphs`].
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The union of all graphs, sorted and free of duplicates.
    pub fn into_triples(self) -> Vec<Triple> {
        let mut graphs = self.graphs;
        if graphs.len() == 1 {
            return graphs.pop().map(|(_, t)| t).unwrap_or_default();
        }
        let mut all: Vec<Triple> = graphs.into_iter().flat_map(|(_, t)| t).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Parses a whole document into a [`Dataset`], streaming from `reader`.
///
/// Applies [`ImportOptions::graphs`], [`ImportOptions::blank_nodes`],
/// [`ImportOptions::base_iri`] and reports progress; the mode and message are only used by
/// [`Repository::import`].
///
/// ```
/// use llmkg_federation_core::rdf::{Format, GraphName, ImportOptions, read};
/// let nquads = "<urn:a> <urn:p> \"x\" <https://example.org/g1> .\n<urn:b> <urn:p> \"y\" .\n";
/// let mut dataset = read(nquads.as_bytes(), Format::NQuads, ImportOptions::new())?;
/// assert_eq!(dataset.graph_names().count(), 2);
/// let g1 = dataset.take_graph(&GraphName::named("https://example.org/g1")?).unwrap();
/// assert_eq!(g1.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read(
    reader: impl Read,
    format: Format,
    mut options: ImportOptions<'_>,
) -> Result<Dataset, ImportError> {
    read_dataset(reader, format, &mut options)
}

/// What the reader wrapper observed, shared with the parse loop.
struct InputState {
    /// Bytes read from the caller's reader (byte order mark included).
    bytes: Cell<u64>,
    /// Set when the caller's reader failed (as opposed to the parser).
    reader_failed: Cell<bool>,
    /// Length of the UTF-8 byte order mark skipped at the start (0 or 3).
    bom: u64,
    /// Set once a limit has been crossed, or the scanner found an error of its own; the
    /// import then fails with it.
    limit: Cell<Option<Halt>>,
    /// Bytes charged against [`ImportLimits::max_memory`] so far.
    memory: Cell<u64>,
    max_memory: u64,
}

impl InputState {
    /// Charges `bytes` against the memory budget; the error if it is exceeded.
    fn charge(&self, bytes: u64, at: Position) -> Result<(), LimitHit> {
        let used = self.memory.get().saturating_add(bytes);
        self.memory.set(used);
        if used > self.max_memory {
            return Err(LimitHit { limit: Limit::Memory, max: self.max_memory, at });
        }
        Ok(())
    }
}

/// The estimated heap overhead of one owned string or one hash-set entry, on top of its bytes.
const ENTRY_OVERHEAD: u64 = 32;

/// What one prefix declaration costs the parser besides its text (its map entry and the
/// parsed IRI's positions).
const PREFIX_OVERHEAD: u64 = 128;

/// Comments are passed to the parser up to this many bytes; the rest of a longer comment is
/// dropped (the parser would otherwise need the whole comment in its buffer).
const COMMENT_KEPT: u64 = 4096;

/// How far behind the input the parser's position may lag: its buffer holds at most 16 MiB.
/// Elisions further back than this are folded into one count.
const PARSER_LAG: u64 = 32 << 20;

/// Whether `b` starts a UTF-8 character (is not a continuation byte): columns count these.
fn starts_char(b: u8) -> bool {
    b & 0xC0 != 0x80
}

/// Where a limit was crossed.
#[derive(Clone, Copy, Debug)]
struct LimitHit {
    limit: Limit,
    max: u64,
    at: Position,
}

impl LimitHit {
    fn error(self) -> ImportError {
        ImportError::LimitExceeded {
            limit: self.limit,
            max: self.max,
            line: self.at.line + 1,
            column: self.at.column + 1,
            offset: self.at.offset,
        }
    }
}

/// Why the scanner stopped the input: a limit, or a syntax error it checks itself (see
/// [`LINE_END_IN_STRING`]).
#[derive(Clone, Copy, Debug)]
enum Halt {
    Limit(LimitHit),
    Syntax { at: Position, message: &'static str },
}

impl Halt {
    fn error(self) -> ImportError {
        match self {
            Halt::Limit(hit) => hit.error(),
            Halt::Syntax { at, message } => ImportError::Syntax {
                line: at.line + 1,
                column: at.column + 1,
                offset: at.offset,
                message: message.to_owned(),
            },
        }
    }
}

impl From<LimitHit> for Halt {
    fn from(hit: LimitHit) -> Self {
        Halt::Limit(hit)
    }
}

/// The line formats are parsed in oxttl's lenient mode, which lets a string run on over a
/// line end; the scanner refuses one itself, with the message and position (the opening
/// quote) the strict parser gives.
const LINE_END_IN_STRING: &str = "Line jumps are not allowed in string literals, use \\n";

/// A position in the input, all from 0; `offset` includes the byte order mark.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    line: u64,
    column: u64,
    offset: u64,
}

/// Lexical state of [`Scanner`]: just enough of the formats' tokens to know whether a byte is
/// in a comment, a string, an IRI, or between tokens. `q` is the quote character of a string.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Between tokens, or in a token that cannot hold a bracket.
    Code,
    /// After a backslash outside strings (an escape in a prefixed name, `ex:a\(`).
    Escape,
    /// In a comment, up to the end of the line.
    Comment,
    /// In an IRI `<...>`, which has no escape for `>`.
    Iri,
    /// After one quote: an empty string, a long string, or a short string begins.
    Quote1(u8),
    /// After two quotes: an empty string, unless a third opens a long string.
    Quote2(u8),
    /// In a short string.
    Short(u8),
    /// After a backslash in a short string.
    ShortEscape(u8),
    /// In a long string, after this many (0 to 2) consecutive closing quotes.
    Long(u8, u8),
    /// After a backslash in a long string.
    LongEscape(u8),
}

/// A part of a long comment that the parser did not see.
#[derive(Clone, Copy, Debug)]
struct Elision {
    /// Offset in the parser's text (byte order mark included) where the bytes were dropped.
    at: u64,
    /// Line of the comment, from 0.
    line: u64,
    /// Bytes and characters dropped.
    bytes: u64,
    chars: u64,
}

/// What the scanner does with one byte.
enum Step {
    Keep,
    Drop,
    Hit(Limit, u64),
    /// A syntax error the parser would not report (see [`LINE_END_IN_STRING`]).
    Syntax(&'static str),
}

/// Scans every byte read before the parser sees it: tracks its position, the lexical state,
/// and for Turtle the nesting depth of `(` and `[` and the prefix declarations; bounds tokens;
/// drops the tail of long comments. It stops a document before the parser sees the byte that
/// crosses a limit.
struct Scanner {
    at: Position,
    after_cr: bool,
    /// Whether to count brackets and prefixes (Turtle).
    turtle: bool,
    lex: Lex,
    depth: u32,
    max_depth: u32,
    max_token: u64,
    /// Where the current token started; `None` between tokens.
    token_start: Option<Position>,
    /// Bytes of the current comment seen, and whether its tail is being dropped.
    comment_len: u64,
    dropping: bool,
    /// Bytes passed on to the parser (byte order mark included).
    out: u64,
    elisions: std::collections::VecDeque<Elision>,
    /// Bytes dropped by elisions folded out of `elisions`.
    folded: u64,
    /// The word being read between tokens, to spot `@prefix` and `PREFIX` (Turtle); `None`
    /// once it cannot be one of them.
    word: Option<([u8; 7], usize)>,
    /// Bytes since the keyword of a prefix declaration whose IRI has not ended yet.
    directive: Option<u64>,
    /// Whether runs of bytes inside IRIs and strings are passed on in one step
    /// ([`quiet_run`](Self::quiet_run)); off only in the test that compares both paths.
    bulk: bool,
}

impl Scanner {
    fn new(turtle: bool, bom: u64, limits: &ImportLimits) -> Self {
        let start = Position { offset: bom, ..Position::default() };
        Self {
            at: start,
            after_cr: false,
            turtle,
            lex: Lex::Code,
            depth: 0,
            max_depth: limits.max_nesting_depth,
            max_token: limits.max_token_len.min(ImportLimits::MAX_TOKEN_LEN),
            token_start: None,
            comment_len: 0,
            dropping: false,
            out: bom,
            elisions: std::collections::VecDeque::new(),
            folded: 0,
            word: Some(([0; 7], 0)),
            directive: None,
            bulk: true,
        }
    }

    /// Scans `buf` in place, moving the bytes the parser is to see to its front, and records
    /// `_:labels` in `text`. Returns how many bytes were kept, and the limit crossed, if one
    /// was (the scan stops at the byte that crossed it, which is not kept).
    fn feed(
        &mut self,
        buf: &mut [u8],
        input: &InputState,
        mut text: Option<&mut TextScan>,
    ) -> (usize, Option<Halt>) {
        let mut kept = 0;
        let mut i = 0;
        while i < buf.len() {
            if self.bulk {
                match self.quiet_run(buf, i, kept, input, text.as_deref_mut()) {
                    Ok(0) => {}
                    Ok(n) => {
                        i += n;
                        kept += n;
                        continue;
                    }
                    Err((n, hit)) => return (kept + n, Some(hit.into())),
                }
            }
            let Some(&b) = buf.get(i) else { break };
            i += 1;
            match self.step(b, input) {
                Step::Hit(limit, max) => {
                    let at = match limit {
                        Limit::TokenLength => self.token_start.unwrap_or(self.at),
                        _ => self.at,
                    };
                    return (kept, Some(LimitHit { limit, max, at }.into()));
                }
                Step::Syntax(message) => {
                    // At the string's opening quote, where the strict parser puts it.
                    let at = self.token_start.unwrap_or(self.at);
                    return (kept, Some(Halt::Syntax { at, message }));
                }
                Step::Drop => self.drop_byte(b),
                Step::Keep => {
                    if let Some(text) = text.as_deref_mut()
                        && let Some(label) = text.byte(b)
                        && let Err(hit) = input.charge(label + ENTRY_OVERHEAD, self.at)
                    {
                        return (kept, Some(hit.into()));
                    }
                    if let Some(slot) = buf.get_mut(kept) {
                        *slot = b;
                    }
                    kept += 1;
                    self.out += 1;
                }
            }
            self.advance(b);
        }
        (kept, None)
    }

    /// Passes on, in one step, the run of bytes from `buf[i]` on that cannot change the
    /// lexical state: the inside of an IRI up to its `>`, or of a string up to its quote or a
    /// backslash, stopping at line ends and before the byte that would cross the token-length
    /// limit (those take the byte-at-a-time path of [`step`](Self::step), which this must
    /// agree with byte for byte). The run is moved to `buf[kept..]`. Returns its length, or
    /// the bytes of it kept and the limit crossed by the next (for Turtle, the memory charged
    /// for a blank-node label).
    fn quiet_run(
        &mut self,
        buf: &mut [u8],
        i: usize,
        kept: usize,
        input: &InputState,
        text: Option<&mut TextScan>,
    ) -> Result<usize, (usize, LimitHit)> {
        let rest = buf.get(i..).unwrap_or_default();
        let mut n = match self.lex {
            Lex::Iri => memchr::memchr3(b'>', b'\n', b'\r', rest).unwrap_or(rest.len()),
            Lex::Short(q) | Lex::Long(q, 0) => {
                let end = memchr::memchr3(q, b'\\', b'\n', rest).unwrap_or(rest.len());
                memchr::memchr(b'\r', rest.get(..end).unwrap_or_default()).unwrap_or(end)
            }
            _ => 0,
        };
        // Byte-at-a-time, a byte at offset `o` of a token that started at `s` crosses the
        // limit when `o - s >= max_token`.
        let start = self.token_start.map_or(self.at.offset, |s| s.offset);
        let allowed = start.saturating_add(self.max_token).saturating_sub(self.at.offset);
        n = n.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.token_start.get_or_insert(self.at);
        if let Some(bytes) = self.directive.as_mut() {
            *bytes += n as u64;
        }
        if kept != i {
            buf.copy_within(i..i + n, kept);
        }
        let run = buf.get(kept..kept + n).unwrap_or_default();
        match text {
            // Turtle: the label scan charges memory at the byte that completes a label.
            Some(text) => {
                for (done, &b) in run.iter().enumerate() {
                    if let Some(label) = text.byte(b)
                        && let Err(hit) = input.charge(label + ENTRY_OVERHEAD, self.at)
                    {
                        self.out += done as u64;
                        return Err((done, hit));
                    }
                    self.advance(b);
                }
            }
            None => {
                // No line end in the run: only the offset and the column (in characters) move.
                self.at.offset += n as u64;
                self.at.column += if run.is_ascii() {
                    n as u64
                } else {
                    run.iter().filter(|&&b| starts_char(b)).count() as u64
                };
                self.after_cr = false;
            }
        }
        self.out += n as u64;
        Ok(n)
    }

    /// Records byte `b` of a comment as dropped.
    fn drop_byte(&mut self, b: u8) {
        let start = !self.dropping;
        self.dropping = true;
        if start {
            while self.elisions.front().is_some_and(|e| e.at + PARSER_LAG < self.out) {
                if let Some(e) = self.elisions.pop_front() {
                    self.folded += e.bytes;
                }
            }
            self.elisions.push_back(Elision {
                at: self.out,
                line: self.at.line,
                bytes: 0,
                chars: 0,
            });
        }
        if let Some(e) = self.elisions.back_mut() {
            e.bytes += 1;
            if starts_char(b) {
                e.chars += 1;
            }
        }
    }

    /// The input position of a position in the parser's text (offset with the byte order
    /// mark): adds back what was dropped before it.
    fn input_position(&self, parser: Position) -> Position {
        let mut at = parser;
        at.offset += self.folded;
        for e in self.elisions.iter().filter(|e| e.at <= parser.offset) {
            at.offset += e.bytes;
            if e.line == parser.line {
                at.column += e.chars;
            }
        }
        at
    }

    /// Moves the position past byte `b`. Lines end at `\n`, `\r` or `\r\n`, as the parser
    /// counts them; columns count characters.
    fn advance(&mut self, b: u8) {
        self.at.offset += 1;
        match b {
            b'\r' => {
                self.at.line += 1;
                self.at.column = 0;
                self.after_cr = true;
                return;
            }
            b'\n' => {
                if !self.after_cr {
                    self.at.line += 1;
                }
                self.at.column = 0;
            }
            _ if starts_char(b) => self.at.column += 1,
            _ => {}
        }
        self.after_cr = false;
    }

    /// Advances the lexical state by byte `b`.
    fn step(&mut self, b: u8, input: &InputState) -> Step {
        let mut boundary = false;
        let mut iri_closed = false;
        let mut empty_string = false;
        self.lex = match self.lex {
            Lex::Code => match self.code(b, &mut boundary) {
                Ok(lex) => lex,
                Err(max) => return Step::Hit(Limit::NestingDepth, max),
            },
            Lex::Escape => Lex::Code,
            Lex::Comment if b == b'\n' || b == b'\r' => {
                self.dropping = false;
                boundary = true;
                Lex::Code
            }
            Lex::Comment => {
                self.comment_len += 1;
                // The tail is dropped from a character boundary on.
                if self.dropping || (self.comment_len > COMMENT_KEPT && starts_char(b)) {
                    return Step::Drop;
                }
                return Step::Keep;
            }
            Lex::Iri if b == b'>' => {
                iri_closed = true;
                Lex::Code
            }
            Lex::Iri => Lex::Iri,
            Lex::Quote1(_) | Lex::Short(_) if !self.turtle && (b == b'\n' || b == b'\r') => {
                return Step::Syntax(LINE_END_IN_STRING);
            }
            // The line formats have no long strings: `"""` is an empty string, then a quote
            // that opens the next token.
            Lex::Quote1(q) if b == q && !self.turtle => {
                empty_string = true;
                Lex::Code
            }
            Lex::Quote1(q) if b == q => Lex::Quote2(q),
            Lex::Quote1(q) | Lex::Short(q) => Self::short(q, b),
            Lex::Quote2(q) if b == q => Lex::Long(q, 0),
            Lex::Quote2(_) => match self.code(b, &mut boundary) {
                Ok(lex) => lex,
                Err(max) => return Step::Hit(Limit::NestingDepth, max),
            },
            Lex::ShortEscape(q) => Lex::Short(q),
            Lex::Long(q, 2) if b == q => Lex::Code,
            Lex::Long(q, n) if b == q => Lex::Long(q, n + 1),
            Lex::Long(q, _) if b == b'\\' => Lex::LongEscape(q),
            Lex::Long(q, _) | Lex::LongEscape(q) => Lex::Long(q, 0),
        };
        if let Some(bytes) = self.directive.as_mut() {
            *bytes += 1;
            if iri_closed {
                let cost = *bytes + PREFIX_OVERHEAD;
                self.directive = None;
                if let Err(hit) = input.charge(cost, self.at) {
                    return Step::Hit(hit.limit, hit.max);
                }
            }
        }
        if boundary || self.lex == Lex::Comment {
            self.token_start = None;
            return Step::Keep;
        }
        let start = *self.token_start.get_or_insert(self.at);
        if self.at.offset - start.offset >= self.max_token {
            return Step::Hit(Limit::TokenLength, self.max_token);
        }
        if empty_string {
            self.token_start = None;
        }
        Step::Keep
    }

    fn short(q: u8, b: u8) -> Lex {
        match b {
            _ if b == q => Lex::Code,
            b'\\' => Lex::ShortEscape(q),
            _ => Lex::Short(q),
        }
    }

    /// A byte between tokens or in a name, number or punctuation; sets `boundary` if it
    /// separates tokens. The error is the nesting limit, crossed by this byte.
    fn code(&mut self, b: u8, boundary: &mut bool) -> Result<Lex, u64> {
        *boundary =
            matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b',' | b';' | b'(' | b')' | b'[' | b']');
        if self.turtle {
            self.word = match self.word {
                Some((mut w, n)) if b.is_ascii_alphabetic() || (b == b'@' && n == 0) => {
                    match w.get_mut(n) {
                        Some(slot) => {
                            *slot = b;
                            Some((w, n + 1))
                        }
                        None => None,
                    }
                }
                Some((w, n)) if *boundary || b == b'<' || b == b'#' => {
                    let word = w.get(..n).unwrap_or_default();
                    if word == b"@prefix" || word.eq_ignore_ascii_case(b"prefix") {
                        self.directive = Some(0);
                    }
                    Some(([0; 7], 0))
                }
                _ if *boundary => Some(([0; 7], 0)),
                _ => None,
            };
        }
        Ok(match b {
            b'(' | b'[' if self.turtle => {
                if self.depth >= self.max_depth {
                    return Err(u64::from(self.max_depth));
                }
                self.depth += 1;
                Lex::Code
            }
            b')' | b']' if self.turtle => {
                self.depth = self.depth.saturating_sub(1);
                Lex::Code
            }
            b'#' => {
                self.comment_len = 1;
                self.dropping = false;
                Lex::Comment
            }
            b'<' => Lex::Iri,
            b'"' => Lex::Quote1(b),
            // Only Turtle has single-quoted strings.
            b'\'' if self.turtle => Lex::Quote1(b),
            b'\\' => Lex::Escape,
            _ => Lex::Code,
        })
    }
}

const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Reads the first (up to) three bytes of `reader` and returns them, or nothing if they are
/// a UTF-8 byte order mark (which the parsers would reject), with the number of bytes read.
fn read_head(reader: &mut impl Read) -> std::io::Result<(Vec<u8>, u64)> {
    let mut head = [0u8; 3];
    let mut len = 0;
    while let Some(rest) = head.get_mut(len..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) if n <= rest.len() => len += n,
            Ok(_) => return Err(too_many_bytes()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kept = if head == UTF8_BOM { &[][..] } else { head.get(..len).unwrap_or_default() };
    Ok((kept.to_vec(), len as u64))
}

fn limit_crossed() -> std::io::Error {
    std::io::Error::other("an import limit was crossed")
}

fn too_many_bytes() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the reader reported more bytes than the buffer holds",
    )
}

/// A reader that retries interrupted reads, counts bytes, runs the [`Scanner`] and, for
/// Turtle, hashes the text and collects the blank-node labels it contains.
struct Tap<'s, R> {
    inner: R,
    input: &'s InputState,
    text: Option<&'s RefCell<TextScan>>,
    scanner: &'s RefCell<Scanner>,
}

impl<R: Read> Read for Tap<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.input.limit.get().is_some() {
            return Err(limit_crossed());
        }
        // Rather a short read than a chunk made empty by a dropped comment tail, which the
        // parser would take for the end of the input.
        loop {
            let n = loop {
                match self.inner.read(buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.input.reader_failed.set(true);
                        return Err(e);
                    }
                }
            };
            let Some(chunk) = buf.get_mut(..n) else {
                self.input.reader_failed.set(true);
                return Err(too_many_bytes());
            };
            self.input.bytes.set(self.input.bytes.get() + n as u64);
            let mut text = self.text.map(|t| t.borrow_mut());
            if n == 0 {
                if let Some(text) = text.as_deref_mut()
                    && let Some(label) = text.flush()
                    && let Err(hit) =
                        self.input.charge(label + ENTRY_OVERHEAD, self.scanner.borrow().at)
                {
                    self.input.limit.set(Some(hit.into()));
                    return Err(limit_crossed());
                }
                return Ok(0);
            }
            if let Some(text) = text.as_deref_mut() {
                text.hasher.update(chunk);
            }
            let (kept, hit) =
                self.scanner.borrow_mut().feed(chunk, self.input, text.as_deref_mut());
            if let Some(hit) = hit {
                // The parser gets the bytes before the one that crossed the limit (a syntax
                // error there still wins), then an error; never an early end of input, which
                // could look like a whole document.
                self.input.limit.set(Some(hit));
                if kept == 0 {
                    return Err(limit_crossed());
                }
            }
            if kept > 0 {
                return Ok(kept);
            }
        }
    }
}

/// Hashes the document and records every `_:label` written in it, to tell labelled blank
/// nodes from the ones the parser invents for `[]` and collections. The scan is lexical and
/// over-approximates (it also records `_:x` inside literals and comments, and label
/// characters the grammar would not allow); that is harmless: parser-invented ids are random
/// 128-bit numbers that do not occur in the text. It never misses a label the parser reads:
/// such a label ends at an ASCII delimiter (no Turtle token starts with another character),
/// so it is a maximal run of the characters recorded here, less trailing dots; and the scan's
/// state carries over from one read to the next.
struct TextScan {
    hasher: blake3::Hasher,
    labels: HashSet<Box<str>, Hasher>,
    state: ScanState,
    current: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanState {
    Idle,
    Underscore,
    Label,
}

impl TextScan {
    fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            labels: HashSet::default(),
            state: ScanState::Idle,
            current: Vec::new(),
        }
    }

    /// Scans one byte (the hash is updated separately); returns the length of a label it
    /// completed and recorded for the first time.
    fn byte(&mut self, b: u8) -> Option<u64> {
        let mut recorded = None;
        self.state = match self.state {
            ScanState::Idle if b == b'_' => ScanState::Underscore,
            ScanState::Idle => ScanState::Idle,
            ScanState::Underscore if b == b':' => {
                self.current.clear();
                ScanState::Label
            }
            ScanState::Underscore if b == b'_' => ScanState::Underscore,
            ScanState::Underscore => ScanState::Idle,
            ScanState::Label
                if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') || b >= 0x80 =>
            {
                self.current.push(b);
                ScanState::Label
            }
            ScanState::Label => {
                recorded = self.finish_label();
                ScanState::Idle
            }
        };
        recorded
    }

    /// Ends the input; returns the length of a label it completed and recorded.
    fn flush(&mut self) -> Option<u64> {
        let recorded = if self.state == ScanState::Label { self.finish_label() } else { None };
        self.state = ScanState::Idle;
        recorded
    }

    fn finish_label(&mut self) -> Option<u64> {
        while self.current.last() == Some(&b'.') {
            self.current.pop();
        }
        let mut recorded = None;
        if !self.current.is_empty() {
            let label = String::from_utf8_lossy(&self.current);
            if !self.labels.contains(label.as_ref()) {
                recorded = Some(label.len() as u64);
                self.labels.insert(label.into());
            }
        }
        self.current.clear();
        recorded
    }
}

/// 12 hex digits of BLAKE3 over `bytes` under `domain`.
fn tag(domain: &[u8], bytes: &[u8]) -> String {
    let h = crate::encoding::hash_bytes(domain, bytes);
    crate::encoding::hex(h.get(..6).unwrap_or_default())
}

/// The scope prefix of a scope name.
fn scope_prefix(name: &str) -> String {
    format!("{}_", tag(b"llmkg/rdf/blank-scope/v1", name.as_bytes()))
}

/// Applies a scope prefix, idempotently.
fn scoped(prefix: Option<&str>, label: String) -> String {
    match prefix {
        Some(p) if !label.starts_with(p) => format!("{p}{label}"),
        _ => label,
    }
}

/// Converts parsed terms, checking each distinct IRI and language tag once.
struct Converter<'s> {
    iris: HashSet<std::sync::Arc<str>, Hasher>,
    tags: HashMap<String, LanguageTag, Hasher>,
    /// The labels written in the text (Turtle only).
    text: Option<&'s RefCell<TextScan>>,
    /// Parser-invented blank-node ids, numbered by first appearance.
    anonymous: HashMap<String, u64, Hasher>,
    /// Estimated bytes the caches above have grown by, for the memory budget.
    grown: u64,
}

impl<'s> Converter<'s> {
    /// A converter with empty caches; `text` holds the labels written in a Turtle text.
    fn new(text: Option<&'s RefCell<TextScan>>) -> Self {
        Self {
            iris: HashSet::default(),
            tags: HashMap::default(),
            text,
            anonymous: HashMap::default(),
            grown: 0,
        }
    }

    /// The IRI of `iri`, sharing the text of an equal IRI seen before: a document names few
    /// distinct IRIs many times, and each is then held once, by the triples and the state.
    fn iri(&mut self, iri: String) -> Result<Iri, TermError> {
        if let Some(known) = self.iris.get(iri.as_str()) {
            return Ok(Iri::from_checked(std::sync::Arc::clone(known)));
        }
        let iri = Iri::new(iri)?;
        if self.iris.len() < IRI_CACHE_LIMIT {
            self.grown += iri.as_str().len() as u64 + ENTRY_OVERHEAD;
            self.iris.insert(std::sync::Arc::clone(iri.shared_text()));
        }
        Ok(iri)
    }

    /// Converts a blank node; returns true as well if the parser invented it (its label is
    /// then a placeholder, replaced once the document hash is known).
    fn blank(
        &mut self,
        b: oxrdf::BlankNode,
        prefix: Option<&str>,
    ) -> Result<(Term, bool), TermError> {
        let label = b.into_string();
        if let Some(text) = self.text
            && !text.borrow().labels.contains(label.as_str())
        {
            let next = self.anonymous.len() as u64;
            if !self.anonymous.contains_key(&label) {
                self.grown += label.len() as u64 + ENTRY_OVERHEAD;
                self.anonymous.insert(label.clone(), next);
            }
            return Ok((Term::Blank(BlankNode::new(label)?), true));
        }
        Ok((Term::Blank(BlankNode::new(scoped(prefix, label))?), false))
    }

    fn literal(&mut self, l: oxrdf::Literal) -> Result<Literal, TermError> {
        match l.destruct() {
            (value, _, Some(tag)) => {
                let tag = match self.tags.get(&tag) {
                    Some(t) => t.clone(),
                    None => {
                        let t = LanguageTag::new(tag.as_str())?;
                        self.grown += 2 * (tag.len() as u64 + ENTRY_OVERHEAD);
                        self.tags.insert(tag, t.clone());
                        t
                    }
                };
                Literal::with_language_tag(value, tag)
            }
            (value, Some(datatype), None) => {
                let datatype = self.iri(datatype.into_string())?;
                Literal::typed(value, datatype)
            }
            (value, None, None) => Literal::string(value),
        }
    }

    /// Converts one quad's triple; the flag tells whether it holds a parser-invented node.
    fn triple(
        &mut self,
        q: oxrdf::Quad,
        prefix: Option<&str>,
    ) -> Result<(Triple, bool), TermError> {
        let (subject, s_anon) = match q.subject {
            oxrdf::NamedOrBlankNode::NamedNode(n) => (Term::Iri(self.iri(n.into_string())?), false),
            oxrdf::NamedOrBlankNode::BlankNode(b) => self.blank(b, prefix)?,
        };
        let predicate = Term::Iri(self.iri(q.predicate.into_string())?);
        let (object, o_anon) = match q.object {
            oxrdf::Term::NamedNode(n) => (Term::Iri(self.iri(n.into_string())?), false),
            oxrdf::Term::BlankNode(b) => self.blank(b, prefix)?,
            oxrdf::Term::Literal(l) => (Term::Literal(self.literal(l)?), false),
        };
        Ok((Triple::from_valid_parts(subject, predicate, object), s_anon || o_anon))
    }

    fn graph_name(
        &mut self,
        g: oxrdf::GraphName,
        prefix: Option<&str>,
    ) -> Result<GraphName, TermError> {
        Ok(match g {
            oxrdf::GraphName::DefaultGraph => GraphName::Default,
            oxrdf::GraphName::NamedNode(n) => GraphName::Named(self.iri(n.into_string())?),
            oxrdf::GraphName::BlankNode(b) => {
                GraphName::Blank(BlankNode::new(scoped(prefix, b.into_string()))?)
            }
        })
    }
}

/// The estimated heap bytes of a triple's terms (the triple value itself not included).
fn triple_heap(t: &Triple) -> u64 {
    fn term(t: &Term) -> u64 {
        let text = match t {
            Term::Iri(iri) => iri.as_str().len(),
            Term::Blank(b) => b.label().len(),
            Term::Literal(l) => match l.kind() {
                LiteralKind::String => l.value().len(),
                LiteralKind::Typed(_) | LiteralKind::Language(_) => {
                    l.value().len() + l.datatype().len() + l.language_tag().map_or(0, str::len)
                }
            },
        };
        text as u64 + 2 * ENTRY_OVERHEAD
    }
    term(t.subject()) + term(t.predicate()) + term(t.object())
}

/// One graph of the document being read.
struct Bucket {
    name: GraphName,
    selected: bool,
    /// The blank-node scope prefix for this graph.
    prefix: Option<String>,
    triples: Vec<Triple>,
    /// Indexes into `triples` of the triples holding parser-invented blank nodes.
    anonymous: Vec<usize>,
}

type Quads<'r> = Box<dyn Iterator<Item = Result<oxrdf::Quad, TurtleParseError>> + 'r>;

/// What the parse loop keeps of a document.
struct Collected {
    buckets: Vec<Bucket>,
    statements: u64,
    skipped: u64,
}

/// Why the parse loop stopped early: an import error, or the parser's error (which the caller
/// positions, knowing what the scanner dropped).
enum Failure {
    Import(ImportError),
    Parse(TurtleParseError),
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Self {
        Failure::Import(e)
    }
}

/// What the parse loop applies to every statement: the options that concern the statements.
struct Selection<'o> {
    graphs: &'o GraphSelection,
    blank_nodes: &'o BlankNodeScope,
    document_prefix: Option<String>,
    limits: ImportLimits,
}

/// The parse loop: converts each statement, files it under its graph, charges its memory.
/// `at` is how far the input had been read (for positions of term errors and limits);
/// `progress` is called each time another [`PROGRESS_EVERY_BYTES`] have been read.
fn collect(
    quads: Quads<'_>,
    select: &Selection<'_>,
    conv: &mut Converter<'_>,
    input: &InputState,
    at: &dyn Fn() -> Position,
    progress: &mut Option<Box<dyn FnMut(Progress) + '_>>,
) -> Result<Collected, Failure> {
    let limits = select.limits;
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut index: HashMap<oxrdf::GraphName, usize, Hasher> = HashMap::default();
    let mut last: Option<(oxrdf::GraphName, usize)> = None;
    let (mut statements, mut skipped, mut reported) = (0u64, 0u64, 0u64);
    let mut pending = 0u64;

    for item in quads {
        let mut quad = item.map_err(Failure::Parse)?;
        let at = at();
        statements += 1;
        let graph = std::mem::take(&mut quad.graph_name);
        let slot = match &last {
            Some((g, i)) if *g == graph => *i,
            _ => {
                let i = match index.get(&graph) {
                    Some(i) => *i,
                    None => {
                        let name = conv
                            .graph_name(graph.clone(), select.document_prefix.as_deref())
                            .map_err(|source| ImportError::term(statements, at, source))?;
                        let selected = match select.graphs {
                            GraphSelection::All => true,
                            GraphSelection::Only(g) => *g == name,
                        };
                        let prefix = match (select.blank_nodes, &name) {
                            (BlankNodeScope::Graph, GraphName::Default) => None,
                            (BlankNodeScope::Graph, g) => Some(scope_prefix(&g.scope_name())),
                            _ => select.document_prefix.clone(),
                        };
                        buckets.push(Bucket {
                            name,
                            selected,
                            prefix,
                            triples: Vec::new(),
                            anonymous: Vec::new(),
                        });
                        index.insert(graph.clone(), buckets.len() - 1);
                        buckets.len() - 1
                    }
                };
                last = Some((graph, i));
                i
            }
        };
        if let Some(bucket) = buckets.get_mut(slot) {
            if bucket.selected {
                if pending >= limits.max_pending_triples {
                    let max = limits.max_pending_triples;
                    return Err(LimitHit { limit: Limit::PendingTriples, max, at }.error().into());
                }
                pending += 1;
                let (triple, anonymous) = conv
                    .triple(quad, bucket.prefix.as_deref())
                    .map_err(|source| ImportError::term(statements, at, source))?;
                // Charged before it is kept: the heap of its terms, the caches' growth, and
                // the vectors' growth when they reallocate.
                let mut cost = triple_heap(&triple) + std::mem::take(&mut conv.grown);
                if bucket.triples.len() == bucket.triples.capacity() {
                    let more = bucket.triples.capacity().max(4) as u64;
                    cost += more * std::mem::size_of::<Triple>() as u64;
                }
                if anonymous && bucket.anonymous.len() == bucket.anonymous.capacity() {
                    let more = bucket.anonymous.capacity().max(4) as u64;
                    cost += more * std::mem::size_of::<usize>() as u64;
                }
                input.charge(cost, at).map_err(LimitHit::error)?;
                if anonymous {
                    bucket.anonymous.push(bucket.triples.len());
                }
                bucket.triples.push(triple);
            } else {
                skipped += 1;
            }
        }
        let read = input.bytes.get();
        if read >= reported + PROGRESS_EVERY_BYTES
            && let Some(progress) = progress.as_mut()
        {
            reported = read;
            progress(Progress { bytes_read: read, statements });
        }
    }
    Ok(Collected { buckets, statements, skipped })
}

/// Bytes read, scanned and parsed as one piece on two threads.
const PIECE_BYTES: usize = 32 * 1024;

/// Pieces in flight between the two threads (what they hold beyond the budget of
/// [`ImportLimits::max_memory`]: at most this many times [`PIECE_BYTES`]).
const PIECES_IN_FLIGHT: usize = 8;

/// What the scanning thread is sent: the input as read, in order.
enum Raw {
    Bytes(Vec<u8>),
    /// The input ended.
    End,
    /// The caller's reader failed.
    Failed(std::io::Error),
}

/// What the scanning thread sends back, one for each [`Raw`], in order.
enum Scanned {
    /// The bytes for the parser, with the scanner's position and token start after them.
    Bytes { bytes: Vec<u8>, at: Position, token_start: Option<Position> },
    /// The input ended.
    End,
    /// The scanner stopped the input after the bytes sent last.
    Halt(Halt),
    /// The caller's reader failed.
    Failed(std::io::Error),
}

/// The parser's reader on two threads: it reads the caller's input in pieces, keeps up to
/// [`PIECES_IN_FLIGHT`] of them at the scanning thread, and serves the scanned bytes in order.
/// Like the scanning reader of the one-thread path, it records the scanner's position after
/// the piece being read, and the scanner's stop.
struct Relay<'i, R> {
    inner: R,
    input: &'i InputState,
    to_scan: std::sync::mpsc::SyncSender<Raw>,
    scanned: std::sync::mpsc::Receiver<Scanned>,
    /// Pieces sent and not yet received back.
    outstanding: usize,
    /// Whether the caller's input has been read to its end (or its failure).
    read_all: bool,
    piece: Vec<u8>,
    next: usize,
    view: &'i Cell<(Position, Option<Position>)>,
    /// Set once the input ended or stopped: every later read says the same.
    over: Option<Over>,
}

/// How the input [`Relay`] serves came to an end.
#[derive(Clone, Copy)]
enum Over {
    /// It ended: reads return 0.
    Ended,
    /// It failed or crossed a limit (said once, by the read that saw it): reads fail.
    Stopped,
}

impl<R: Read> Relay<'_, R> {
    /// Reads one piece of the caller's input and sends it to be scanned.
    fn send_piece(&mut self) {
        let mut piece = vec![0u8; PIECE_BYTES];
        let n = loop {
            match self.inner.read(&mut piece) {
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let raw = match n {
            Ok(0) => Raw::End,
            Ok(n) if n <= piece.len() => {
                self.input.bytes.set(self.input.bytes.get() + n as u64);
                piece.truncate(n);
                Raw::Bytes(piece)
            }
            Ok(_) => Raw::Failed(too_many_bytes()),
            Err(e) => Raw::Failed(e),
        };
        match raw {
            Raw::Bytes(_) => {}
            Raw::Failed(_) => {
                self.input.reader_failed.set(true);
                self.read_all = true;
            }
            Raw::End => self.read_all = true,
        }
        // The scanning thread takes every piece unless it stopped the input (then the
        // reply already sent says so).
        if self.to_scan.send(raw).is_ok() {
            self.outstanding += 1;
        }
    }
}

impl<R: Read> Read for Relay<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.next >= self.piece.len() {
            match self.over {
                Some(Over::Ended) => return Ok(0),
                Some(Over::Stopped) => return Err(std::io::Error::other("the input stopped")),
                None => {}
            }
            while !self.read_all && self.outstanding < PIECES_IN_FLIGHT {
                self.send_piece();
            }
            let reply = self.scanned.recv();
            self.outstanding = self.outstanding.saturating_sub(1);
            match reply {
                Ok(Scanned::Bytes { bytes, at, token_start }) => {
                    self.piece = bytes;
                    self.next = 0;
                    self.view.set((at, token_start));
                }
                Ok(Scanned::End) => self.over = Some(Over::Ended),
                Ok(Scanned::Halt(halt)) => {
                    self.input.limit.set(Some(halt));
                    self.over = Some(Over::Stopped);
                    return Err(limit_crossed());
                }
                Ok(Scanned::Failed(e)) => {
                    self.over = Some(Over::Stopped);
                    return Err(e);
                }
                Err(_) => {
                    self.over = Some(Over::Stopped);
                    return Err(std::io::Error::other("the scanning thread stopped"));
                }
            }
        }
        let rest = self.piece.get(self.next..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        if let (Some(to), Some(from)) = (buf.get_mut(..n), rest.get(..n)) {
            to.copy_from_slice(from);
        }
        self.next += n;
        Ok(n)
    }
}

/// The scanning thread of [`read_in_two_threads`]: scans each piece in order and sends it
/// back, until the input ends, fails, or crosses a limit.
fn scan_pieces(
    scanner: &mut Scanner,
    max_memory: u64,
    raw: std::sync::mpsc::Receiver<Raw>,
    scanned: std::sync::mpsc::SyncSender<Scanned>,
) {
    // The line formats' scan charges nothing (no labels, no prefixes); the budget is the
    // parsing thread's.
    let input = InputState {
        bytes: Cell::new(0),
        reader_failed: Cell::new(false),
        bom: 0,
        limit: Cell::new(None),
        memory: Cell::new(0),
        max_memory,
    };
    for piece in raw {
        let reply = match piece {
            Raw::Bytes(mut bytes) => {
                let (kept, hit) = scanner.feed(&mut bytes, &input, None);
                bytes.truncate(kept);
                let (at, token_start) = (scanner.at, scanner.token_start);
                // As in the one-thread path: the bytes before the one that stopped the input
                // (a syntax error there still wins), then the stop.
                if scanned.send(Scanned::Bytes { bytes, at, token_start }).is_err() {
                    return;
                }
                match hit {
                    Some(halt) => Scanned::Halt(halt),
                    None => continue,
                }
            }
            Raw::End => Scanned::End,
            Raw::Failed(e) => Scanned::Failed(e),
        };
        let _ = scanned.send(reply);
        return;
    }
}

/// The statements of an N-Quads (`nquads`) or N-Triples document read from `reader`.
///
/// The line formats are parsed leniently: the strict parser checks every IRI against RFC 3987
/// at every occurrence, a quarter of the parse, where the converter checks each distinct IRI
/// once (and every language tag and datatype) with the same checks. What else lenient mode
/// lets through is refused by the scanner (a line end in a string) or documented (an escaped
/// UTF-16 surrogate pair reads as its character).
fn line_format_quads<'r>(reader: impl Read + 'r, nquads: bool) -> Quads<'r> {
    if nquads {
        Box::new(NQuadsParser::new().lenient().for_reader(reader))
    } else {
        Box::new(
            NTriplesParser::new()
                .lenient()
                .for_reader(reader)
                .map(|r| r.map(|t| t.in_graph(oxrdf::GraphName::DefaultGraph))),
        )
    }
}

/// Whether the line formats are scanned on a second thread by default.
fn parallel_by_default() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

pub(super) fn read_dataset(
    mut reader: impl Read,
    format: Format,
    options: &mut ImportOptions<'_>,
) -> Result<Dataset, ImportError> {
    let mut turtle_parser = TurtleParser::new();
    if let Some(base) = &options.base_iri {
        turtle_parser = turtle_parser.with_base_iri(base.as_str()).map_err(|e| {
            ImportError::BaseIri { iri: base.as_str().to_owned(), reason: e.to_string() }
        })?;
    }
    let (head, head_len) = read_head(&mut reader)?;
    let bom = head_len - head.len() as u64;
    // The kept head bytes go through the scanner like the rest, so they count from there.
    let limits = options.limits;
    let input = InputState {
        bytes: Cell::new(bom),
        reader_failed: Cell::new(false),
        bom,
        limit: Cell::new(None),
        memory: Cell::new(0),
        max_memory: limits.max_memory,
    };
    let turtle = matches!(format, Format::Turtle);
    let scanner = RefCell::new(Scanner::new(turtle, bom, &limits));
    let select = Selection {
        graphs: &options.graphs,
        blank_nodes: &options.blank_nodes,
        document_prefix: match &options.blank_nodes {
            BlankNodeScope::Named(name) => Some(scope_prefix(name)),
            BlankNodeScope::Branch | BlankNodeScope::Graph => None,
        },
        limits,
    };
    let mut inner = std::io::Cursor::new(head).chain(reader);
    let parallel = !turtle && options.parallel.unwrap_or_else(parallel_by_default);
    let progress = &mut options.progress;
    let text = RefCell::new(TextScan::new());
    let nquads = matches!(format, Format::NQuads);
    // `None` if no second thread could be started (nothing has been read then).
    let two = parallel
        .then(|| read_in_two_threads(&mut inner, nquads, &select, &input, &scanner, progress))
        .flatten();
    let (collected, anonymous) = if let Some(collected) = two {
        (collected?, HashMap::default())
    } else {
        let tap = Tap { inner, input: &input, text: turtle.then_some(&text), scanner: &scanner };
        let quads: Quads<'_> = if turtle {
            Box::new(
                turtle_parser
                    .for_reader(tap)
                    .map(|r| r.map(|t| t.in_graph(oxrdf::GraphName::DefaultGraph))),
            )
        } else {
            line_format_quads(tap, nquads)
        };
        let mut conv = Converter::new(turtle.then_some(&text));
        let at = || scanner.borrow().at;
        let collected = collect(quads, &select, &mut conv, &input, &at, progress);
        let collected = collected.map_err(|failure| match failure {
            Failure::Import(e) => e,
            Failure::Parse(e) => {
                let scanner = scanner.borrow();
                let token = scanner.token_start.unwrap_or(scanner.at);
                ImportError::from_parse(e, &input, &scanner, token)
            }
        })?;
        (collected, conv.anonymous)
    };
    if let Some(hit) = input.limit.get() {
        return Err(hit.error());
    }
    let Collected { mut buckets, statements, skipped } = collected;
    if let Some(progress) = options.progress.as_mut() {
        progress(Progress { bytes_read: input.bytes.get(), statements });
    }

    if !anonymous.is_empty() {
        let doc = tag(b"llmkg/rdf/document/v1", text.borrow().hasher.finalize().as_bytes());
        let end = scanner.borrow().at;
        for bucket in &mut buckets {
            name_anonymous(bucket, &anonymous, &doc, end)?;
        }
    }

    let mut graphs: Vec<(GraphName, Vec<Triple>)> = buckets
        .into_iter()
        .filter(|b| b.selected)
        .map(|mut b| {
            b.triples.sort_unstable();
            b.triples.dedup();
            (b.name, b.triples)
        })
        .collect();
    graphs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Dataset { graphs, bytes_read: input.bytes.get(), statements, skipped })
}

/// Reads an N-Quads (`nquads`) or N-Triples document on two threads: this one reads the
/// input and parses and converts it, a second one scans it in pieces in between (the
/// scanner's limits, positions and dropped comment tails exactly as in the one-thread path).
/// The result and every error are the ones the one-thread path gives; positions "as far as
/// the input had been read" may lie up to a piece further on. Every allocation the result
/// keeps is made on this thread. `None` if the second thread could not be started; nothing
/// has been read then.
fn read_in_two_threads(
    inner: impl Read,
    nquads: bool,
    select: &Selection<'_>,
    input: &InputState,
    scanner: &RefCell<Scanner>,
    progress: &mut Option<Box<dyn FnMut(Progress) + '_>>,
) -> Option<Result<Collected, ImportError>> {
    let view = Cell::new((scanner.borrow().at, None));
    let max_memory = input.max_memory;
    let outcome = {
        let mut guard = scanner.borrow_mut();
        let scanning: &mut Scanner = &mut guard;
        std::thread::scope(|scope| {
            let (to_scan, raw) = std::sync::mpsc::sync_channel::<Raw>(PIECES_IN_FLIGHT);
            let (send_back, scanned) = std::sync::mpsc::sync_channel(PIECES_IN_FLIGHT);
            let scan = move || scan_pieces(scanning, max_memory, raw, send_back);
            std::thread::Builder::new().name("rdf-scan".into()).spawn_scoped(scope, scan).ok()?;
            let relay = Relay {
                inner,
                input,
                to_scan,
                scanned,
                outstanding: 0,
                read_all: false,
                piece: Vec::new(),
                next: 0,
                view: &view,
                over: None,
            };
            let quads = line_format_quads(relay, nquads);
            let mut conv = Converter::new(None);
            let at = || view.get().0;
            // The parser (and with it the relay's channels) is dropped when this returns, so
            // the scanning thread ends with it.
            Some(collect(quads, select, &mut conv, input, &at, progress))
        })
    }?;
    Some(outcome.map_err(|failure| match failure {
        Failure::Import(e) => e,
        Failure::Parse(e) => {
            let (at, token_start) = view.get();
            ImportError::from_parse(e, input, &scanner.borrow(), token_start.unwrap_or(at))
        }
    }))
}

/// Replaces the placeholder labels of parser-invented blank nodes by `anon-<doc>-<n>`, scoped.
fn name_anonymous(
    bucket: &mut Bucket,
    anonymous: &HashMap<String, u64, Hasher>,
    doc: &str,
    end: Position,
) -> Result<(), ImportError> {
    let rename = |t: &Term| -> Result<Term, TermError> {
        match t {
            Term::Blank(b) => match anonymous.get(b.label()) {
                Some(n) => {
                    let label = scoped(bucket.prefix.as_deref(), format!("anon-{doc}-{n}"));
                    Ok(Term::Blank(BlankNode::new(label)?))
                }
                None => Ok(t.clone()),
            },
            _ => Ok(t.clone()),
        }
    };
    for &i in &bucket.anonymous {
        if let Some(t) = bucket.triples.get(i) {
            let renamed = Triple::from_valid_parts(
                rename(t.subject()).map_err(|source| ImportError::term(0, end, source))?,
                t.predicate().clone(),
                rename(t.object()).map_err(|source| ImportError::term(0, end, source))?,
            );
            if let Some(slot) = bucket.triples.get_mut(i) {
                *slot = renamed;
            }
        }
    }
    Ok(())
}

impl<S: Store> Repository<S> {
    /// Imports an RDF document into `branch` as **one** commit (or none if it changes
    /// nothing), streaming from `reader`. See the [`rdf`](crate::rdf) module documentation for
    /// graphs, blank nodes, atomicity and progress.
    ///
    /// Creates the branch if it does not exist (unless the document is empty).
    pub fn import(
        &mut self,
        branch: &BranchName,
        reader: impl Read,
        format: Format,
        mut options: ImportOptions<'_>,
    ) -> Result<ImportReport, ImportError> {
        let dataset = read_dataset(reader, format, &mut options)?;
        let (bytes_read, statements, skipped) =
            (dataset.bytes_read, dataset.statements, dataset.skipped);
        let message = options.message.take().unwrap_or_else(|| format!("import {format}"));
        // A dataset's triples are sorted and distinct already.
        let report = self.import_sorted(branch, dataset.into_triples(), options.mode, &message)?;
        Ok(ImportReport { bytes_read, statements, skipped, ..report })
    }

    /// Commits already parsed triples (one graph of a [`Dataset`], say) to `branch` as one
    /// commit, adding them or replacing the branch state with them. No commit is made if
    /// nothing changes ([`ImportReport::commit`] is `None`). On error the branch is unchanged.
    pub fn import_triples(
        &mut self,
        branch: &BranchName,
        triples: impl IntoIterator<Item = Triple>,
        mode: ImportMode,
        message: &str,
    ) -> Result<ImportReport, ImportError> {
        let (add, _) = ChangeSet::adding(triples).into_parts();
        self.import_sorted(branch, add, mode, message)
    }

    /// [`import_triples`](Self::import_triples) of triples sorted and distinct.
    fn import_sorted(
        &mut self,
        branch: &BranchName,
        add: Vec<Triple>,
        mode: ImportMode,
        message: &str,
    ) -> Result<ImportReport, ImportError> {
        debug_assert!(add.windows(2).all(|w| matches!(w, [a, b] if a < b)));
        let imported = add.len();
        let (add, remove) = match self.head(branch)? {
            None => (add, Vec::new()),
            Some(_) => {
                let state = self.state(branch)?;
                let remove = match mode {
                    ImportMode::Add => Vec::new(),
                    ImportMode::Replace => {
                        let mut gone: Vec<Triple> = state
                            .iter()
                            .map(|t| t.to_triple())
                            .filter(|t| add.binary_search(t).is_err())
                            .collect();
                        gone.sort_unstable();
                        gone
                    }
                };
                let add: Vec<Triple> = add.into_iter().filter(|t| !state.contains(t)).collect();
                (add, remove)
            }
        };
        let (added, removed) = (add.len(), remove.len());
        let commit = match self.commit(branch, ChangeSet::from_sorted(add, remove), message) {
            Ok(id) => Some(id),
            Err(RepoError::NothingToCommit) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(ImportReport {
            triples: imported,
            statements: imported as u64,
            added: if commit.is_some() { added } else { 0 },
            removed: if commit.is_some() { removed } else { 0 },
            commit,
            ..ImportReport::default()
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn input(max_memory: u64) -> InputState {
        InputState {
            bytes: Cell::new(0),
            reader_failed: Cell::new(false),
            bom: 0,
            limit: Cell::new(None),
            memory: Cell::new(0),
            max_memory,
        }
    }

    /// Everything of a scanner that the parser or an error message can observe.
    fn observable(s: &Scanner, text: Option<&TextScan>, input: &InputState) -> String {
        let labels = text.map(|t| t.labels.len());
        format!(
            "{:?} {} {:?} {:?} {} {:?} {} {:?} {} {:?} {}",
            s.at,
            s.after_cr,
            s.token_start,
            s.directive,
            s.out,
            s.elisions,
            s.folded,
            labels,
            s.depth,
            input.limit.get().map(|h| format!("{h:?}")),
            s.lex == Lex::Code,
        )
    }

    /// Bytes that steer the scanner (brackets, quotes, escapes, line ends, comments, labels),
    /// letters, and a two- and a three-byte character, so columns count characters.
    fn document() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            3 => prop::sample::select(
                [
                    "<", ">", "\"", "'", "\\", "\n", "\r", "#", "_:", "(", ")", "[", "]", " ",
                    "@prefix", "PREFIX", ".", ";", ",", "\"\"\"", "'''",
                ]
                .as_slice()
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            4 => "[a-z:/]{1,12}".prop_map(String::into_bytes),
            1 => prop::sample::select(["é", "€", "x"].as_slice())
                .prop_map(|s| s.as_bytes().to_vec()),
        ];
        prop::collection::vec(piece, 0..80).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]

        /// Passing runs inside IRIs and strings on in one step is invisible: the same bytes
        /// reach the parser, with the same positions, limits and lexical state after every
        /// read, as scanning every byte on its own.
        #[test]
        fn quiet_runs_scan_like_single_bytes(
            doc in document(),
            cuts in prop::collection::vec(1usize..40, 1..20),
            turtle in any::<bool>(),
            max_token in 1u64..48,
            max_memory in 0u64..400,
        ) {
            let limits = ImportLimits::new().max_token_len(max_token).max_nesting_depth(3);
            let (bulk_in, single_in) = (input(max_memory), input(max_memory));
            let mut bulk = Scanner::new(turtle, 0, &limits);
            let mut single = Scanner::new(turtle, 0, &limits);
            single.bulk = false;
            let (mut bulk_text, mut single_text) = (TextScan::new(), TextScan::new());
            let mut rest = doc.as_slice();
            let mut cut = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cut.next().unwrap()).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                let (mut a, mut b) = (chunk.to_vec(), chunk.to_vec());
                let (ka, ha) = bulk.feed(&mut a, &bulk_in, turtle.then_some(&mut bulk_text));
                let (kb, hb) = single.feed(&mut b, &single_in, turtle.then_some(&mut single_text));
                prop_assert_eq!(&a[..ka], &b[..kb]);
                prop_assert_eq!(format!("{ha:?}"), format!("{hb:?}"));
                prop_assert_eq!(
                    observable(&bulk, turtle.then_some(&bulk_text), &bulk_in),
                    observable(&single, turtle.then_some(&single_text), &single_in)
                );
                if ha.is_some() {
                    break;
                }
            }
        }
    }

    /// Line-format text: whole statements (valid or not), and the bytes that steer the
    /// scanner and the parser, including a comment long enough to have its tail dropped.
    fn line_document() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => prop::sample::select(
                [
                    "<urn:a> <urn:p> \"x\" .\n",
                    "<urn:a> <urn:p> <urn:o> <urn:g> .\n",
                    "_:b1 <urn:p> \"\\u00e9\"@en .\n",
                    "<urn:b> <urn:p> \"1\"^^<urn:t> .\r\n",
                    "<urn:c> <urn:p> <bad iri> .\n",
                    "<urn:c> <urn:p> \"x\"@abcdefghijk .\n",
                    "<urn:d> <urn:p> \"\"\"x\"\"\" .\n",
                ]
                .as_slice()
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            3 => prop::sample::select(
                [
                    "<", ">", "\"", "'", "\\", "\n", "\r", "#", "_:", " ", ".", "@", "^^", "é",
                ]
                .as_slice()
            )
            .prop_map(|s| s.as_bytes().to_vec()),
            2 => "[a-z:/]{1,12}".prop_map(String::into_bytes),
            1 => Just(format!("# {}\n", "c".repeat(5000)).into_bytes()),
        ];
        prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// On two threads a line-format document reads exactly as on one: the same dataset,
        /// or the same error at the same position, under the same limits.
        #[test]
        fn two_threads_read_like_one(
            doc in line_document(),
            nquads in any::<bool>(),
            max_token in 1u64..64,
            max_memory in 0u64..6000,
            max_pending in 0u64..12,
        ) {
            let format = if nquads { Format::NQuads } else { Format::NTriples };
            let limits = ImportLimits::new()
                .max_token_len(max_token)
                .max_memory(max_memory)
                .max_pending_triples(max_pending);
            let run = |parallel| {
                let options = ImportOptions::new().limits(limits).parallel(parallel);
                match read(doc.as_slice(), format, options) {
                    // Positioned as far as the input had been read (which differs, as
                    // documented): everything but the position must agree.
                    Err(ImportError::Term { statement, source, .. }) => {
                        format!("term error in statement {statement}: {source:?}")
                    }
                    Err(ImportError::LimitExceeded {
                        limit: limit @ (Limit::PendingTriples | Limit::Memory),
                        max,
                        ..
                    }) => format!("{limit:?} above {max}"),
                    other => format!("{other:?}"),
                }
            };
            prop_assert_eq!(run(true), run(false));
        }
    }

    /// A document names each IRI once in memory: every triple naming it (as subject, predicate,
    /// object or datatype) shares one text.
    #[test]
    fn repeated_iris_share_one_text() {
        let doc = "<urn:s> <urn:p> <urn:o> .\n\
                   <urn:s> <urn:p> \"1\"^^<urn:t> .\n\
                   <urn:o> <urn:p> \"2\"^^<urn:t> .\n";
        let triples =
            read(doc.as_bytes(), Format::NTriples, ImportOptions::new()).unwrap().into_triples();
        assert_eq!(triples.len(), 3);
        let texts = |name: &str| -> Vec<std::sync::Arc<str>> {
            let mut found = Vec::new();
            for t in &triples {
                for term in [t.subject(), t.predicate(), t.object()] {
                    let iri = match term {
                        Term::Iri(iri) => Some(iri),
                        Term::Literal(l) => match l.kind() {
                            crate::LiteralKind::Typed(dt) => Some(dt),
                            _ => None,
                        },
                        Term::Blank(_) => None,
                    };
                    if let Some(iri) = iri.filter(|i| i.as_str() == name) {
                        found.push(std::sync::Arc::clone(iri.shared_text()));
                    }
                }
            }
            found
        };
        for (name, times) in [("urn:s", 2), ("urn:p", 3), ("urn:o", 2), ("urn:t", 2)] {
            let found = texts(name);
            assert_eq!(found.len(), times, "{name}");
            assert!(found.windows(2).all(|w| std::sync::Arc::ptr_eq(&w[0], &w[1])), "{name}");
        }
    }

    /// A document of many pieces: the same dataset, the same progress reports' count, and a
    /// syntax error near its end at the same position, on two threads as on one.
    #[test]
    fn two_threads_read_a_long_document_like_one() {
        let mut doc = String::new();
        for i in 0..20_000 {
            doc.push_str(&format!("<urn:s{i}> <urn:p{}> \"value {i}\"@en .\n", i % 7));
            if i % 1000 == 0 {
                doc.push_str(&format!("# {}\n", "c".repeat(9000)));
            }
        }
        let read_with = |text: &str, parallel: bool| {
            let mut reports = 0;
            let options = ImportOptions::new().parallel(parallel).on_progress(|_| reports += 1);
            let outcome = format!("{:?}", read(text.as_bytes(), Format::NTriples, options));
            (outcome, reports)
        };
        let (one, reports_one) = read_with(&doc, false);
        let (two, reports_two) = read_with(&doc, true);
        assert!(one.starts_with("Ok("), "{one:.200}");
        assert_eq!(one, two);
        assert_eq!(reports_one, reports_two);
        assert!(reports_one > 3);
        doc.push_str("<urn:z> <urn:p> \"open\n");
        let (one, _) = read_with(&doc, false);
        let (two, _) = read_with(&doc, true);
        assert!(one.contains("Syntax"), "{one}");
        assert_eq!(one, two);
    }
}
