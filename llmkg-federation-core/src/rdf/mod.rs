//! RDF interop: import N-Triples, N-Quads and Turtle into a branch, export any commit's state.
//!
//! Parsing and serializing are done by the oxigraph family's [`oxttl`]; terms are converted
//! to and from [`oxrdf`] (re-exported here, so the versions match) by `From`/`TryFrom`
//! implementations on the core types.
//!
//! ```
//! use llmkg_federation_core::rdf::{ExportOptions, Format, ImportOptions};
//! use llmkg_federation_core::{BranchName, MemoryStore, NodeKeypair, OrgId, Repository, SystemClock};
//!
//! let mut repo = Repository::new(
//!     MemoryStore::new(),
//!     NodeKeypair::from_secret_bytes([1; 32]),
//!     OrgId::new("acme")?,
//!     SystemClock,
//! );
//! let main = BranchName::new("main")?;
//! let turtle = r#"@prefix ex: <https://example.org/> .
//!     ex:alice ex:knows ex:bob ; ex:address [ ex:city "Berlin" ] ."#;
//! let report = repo.import(&main, turtle.as_bytes(), Format::Turtle, ImportOptions::new())?;
//! assert_eq!(report.added, 3);
//! // The same document again changes nothing and makes no commit.
//! let again = repo.import(&main, turtle.as_bytes(), Format::Turtle, ImportOptions::new())?;
//! assert_eq!(again.commit, None);
//!
//! let head = repo.head(&main)?.expect("imported");
//! let mut out = Vec::new();
//! repo.export(head, &mut out, Format::NTriples, &ExportOptions::new())?;
//! assert_eq!(String::from_utf8(out)?.lines().count(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Import
//!
//! [`Repository::import`](crate::Repository::import) parses the whole input incrementally from
//! any [`std::io::Read`] and then makes **one** commit on the branch — or none, if the input
//! changes nothing (importing the same file twice is a no-op: the second call returns
//! [`ImportReport::commit`] `None`). With [`ImportMode::Add`] (the default) the triples are
//! added to the branch; with [`ImportMode::Replace`] the branch state becomes exactly the
//! imported triples, so re-importing a new release of a vocabulary records what it added and
//! removed.
//!
//! - **Atomic.** Nothing is committed before the last statement has been parsed and
//!   converted. Any error — a syntax error ([`ImportError::Syntax`]), a term the model
//!   rejects ([`ImportError::Term`]), a crossed limit ([`ImportError::LimitExceeded`]), all
//!   three with 1-based line and column; a read error ([`ImportError::Io`]), a failed
//!   commit — leaves the branch, and the repository's cached state of it, exactly as
//!   it was. So does a panicking progress callback (it runs before anything is committed).
//! - **Streaming, bounded memory.** The parser reads the input in small chunks; what the
//!   import holds is bounded by [`ImportLimits`], set with [`ImportOptions::limits`]: a byte
//!   budget for everything it accumulates (the statements kept, the `_:labels` written in a
//!   Turtle text, prefix declarations, caches: [`ImportLimits::max_memory`]), the length of
//!   a single token ([`ImportLimits::max_token_len`]; comments may be of any length), the
//!   nesting depth, which is not limited by the call stack
//!   ([`ImportLimits::max_nesting_depth`]; each open collection or property list costs the
//!   parser several hundred bytes), and the number of statements kept
//!   ([`ImportLimits::max_pending_triples`]). Reads that fail with
//!   [`Interrupted`](std::io::ErrorKind::Interrupted) are retried.
//! - **Two cores.** N-Triples and N-Quads are scanned on a second thread while the calling
//!   thread reads, parses and converts, when the machine has two cores or more
//!   ([`ImportOptions::parallel`]); the outcome is the same as on one thread.
//! - **Text.** The input must be UTF-8 (invalid bytes are a positioned syntax error); a
//!   leading UTF-8 byte order mark is skipped, and lines may end in `\n`, `\r\n` or `\r`.
//!   In N-Triples and N-Quads an escaped UTF-16 surrogate pair (`\uD83D\uDE00`) reads as the
//!   character it encodes; a lone surrogate is a syntax error.
//! - **Progress.** [`ImportOptions::on_progress`] receives [`Progress`] (bytes read,
//!   statements parsed) each time another 256 KiB have been read, and once at the end.
//! - **Wrong format.** Feeding one format as another is a positioned syntax error like any
//!   other (N-Triples read as Turtle is fine: it is a subset).
//!
//! [`read`] is the parsing half on its own: it returns a [`Dataset`] (triples grouped by graph
//! name) without touching a repository.
//!
//! ## Named graphs → organizations
//!
//! The repository stores one graph per branch; named graphs are not a dimension of the state.
//! An N-Quads document is therefore split **by graph name** and each graph goes where the
//! caller decides. In the federation use case each publisher ships its vocabulary in its own
//! named graph, and each graph becomes one organization's contribution on its own branch:
//!
//! - [`read`] returns a [`Dataset`]; [`Dataset::take_graph`] hands one publisher's triples to
//!   that organization's repository ([`Repository::import_triples`](crate::Repository::import_triples)).
//! - [`Repository::import`](crate::Repository::import) imports the graphs chosen by
//!   [`GraphSelection`]: all of them merged into one branch (the default), or only one.
//! - On export, N-Quads puts every triple in the graph chosen by
//!   [`ExportOptions::graph`] (the default graph unless set), so an organization can publish
//!   its branch back under its own graph name.
//!
//! N-Triples and Turtle have only the default graph.
//!
//! ## Blank nodes
//!
//! A blank node is stored under a label ([`BlankNode`]); two blank nodes are
//! the same node exactly when their labels are equal *in the same branch*. The importer
//! derives labels deterministically, so that importing a document twice is a no-op and
//! exporting a state and importing the export reproduces the same state root:
//!
//! - **Labels written in the document** (`_:b0`) are kept as written. With the default
//!   [`BlankNodeScope::Branch`], the label's scope is the branch: `_:b0` in two documents
//!   imported into one branch is one node. Documents that reuse generic labels (many
//!   serializers emit `_:b0`, `_:c14n0`, ...) and may end up in one branch — by import or by
//!   a merge — should be imported with [`BlankNodeScope::Named`] or [`BlankNodeScope::Graph`]:
//!   each label then gets the prefix `<tag>_`, where `<tag>` is 12 hex digits of a BLAKE3
//!   hash of the scope's name (the caller's name, or the quad's graph name). Scoping is
//!   idempotent: a label that already carries the prefix of its scope is kept, so an exported
//!   state re-imported under the same scope is unchanged. (A document that itself writes a
//!   label starting with that prefix is taken to be such an export.)
//! - **Nodes without a label in the document** — Turtle's `[ ... ]` and the nodes of
//!   collections `( ... )` — are numbered in order of first appearance and labelled
//!   `anon-<doc>-<n>`, where `<doc>` is 12 hex digits of a BLAKE3 hash of the document's
//!   bytes (after a byte order mark); then the scope applies as above. The labels depend
//!   only on the document, so they are stable across imports, and two different documents
//!   do not share one (see the limits below). The parser gives such nodes random 128-bit
//!   ids; an id counts as anonymous only if it occurs nowhere in the text as `_:id` (the
//!   scan also looks inside comments and literals), so a label written in the document is
//!   never renamed, whatever it looks like and however the input is split into reads.
//! - **Export** writes the stored labels, which every format can represent (the label
//!   grammar of [`BlankNode`] is the one of these formats), so the
//!   re-import reads back the same labels and the same state root.
//! - **Limits.** The 48-bit tags collide by chance only after about 16 million scopes or
//!   documents. Labels are compared as text, so a document that writes a label another
//!   import derived (`_:anon-<doc>-<n>`, `_:<tag>_b0`) shares that node — an export of the
//!   branch does exactly this, which is what makes its re-import a no-op. Under a scope,
//!   `_:b0` and `_:<tag>_b0` in one document are one node. With [`BlankNodeScope::Graph`],
//!   graphs named by the same *blank node* label in different documents share a scope.
//!
//! ## Export
//!
//! [`write()`] and [`Repository::export`](crate::Repository::export) stream a state in
//! `Triple` order (subject, predicate, object), so equal states give byte-identical files.
//! Turtle output groups by subject and uses the prefixes of [`ExportOptions`] (by default
//! `rdf`, `rdfs`, `owl` and `xsd`).
//!
//! One kind of IRI does not survive an export and re-import: an IRI holding one of the few
//! letters Turtle allows in a prefixed name's local part but RFC 3987 does not (U+FFF0 to
//! U+FFFD, U+E0000 to U+E0FFF, U+xFFFE and U+xFFFF of planes 1 to 14; see [`Iri`]). A Turtle
//! document can name it (`ex:name` followed by U+E01EF, say) and the core accepts it, but the
//! export writes it as `<...>` and the parser checks every `<...>` against RFC 3987 alone, so
//! the re-import fails with a positioned [`ImportError::Syntax`] (nothing is committed).

mod convert;
mod read;
mod write;

use std::fmt;
use std::str::FromStr;

pub use oxrdf;

pub use read::{
    BlankNodeScope, Dataset, GraphSelection, ImportError, ImportLimits, ImportMode, ImportOptions,
    ImportReport, Limit, Progress, read,
};
pub use write::{ExportError, ExportOptions, write};

use crate::term::{BlankNode, Iri};

/// A concrete RDF syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// N-Triples (`.nt`): one triple per line, default graph only.
    NTriples,
    /// N-Quads (`.nq`): N-Triples with an optional graph name per statement.
    NQuads,
    /// Turtle (`.ttl`): prefixes, grouping, anonymous blank nodes and collections.
    Turtle,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Format::NTriples, Format::NQuads, Format::Turtle];

    /// The usual file extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Format::NTriples => "nt",
            Format::NQuads => "nq",
            Format::Turtle => "ttl",
        }
    }

    /// The format of a file extension (`nt`, `nq`, `ttl`; case-insensitive).
    pub fn from_extension(extension: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.extension().eq_ignore_ascii_case(extension))
    }

    /// The IANA media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::NTriples => "application/n-triples",
            Format::NQuads => "application/n-quads",
            Format::Turtle => "text/turtle",
        }
    }

    /// True if the format can name graphs (N-Quads).
    pub fn supports_graphs(self) -> bool {
        matches!(self, Format::NQuads)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::NTriples => "N-Triples",
            Format::NQuads => "N-Quads",
            Format::Turtle => "Turtle",
        })
    }
}

/// A format name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown RDF format {0:?}: expected ntriples/nt, nquads/nq or turtle/ttl")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "ntriples" | "n-triples" => Ok(Format::NTriples),
            "nquads" | "n-quads" => Ok(Format::NQuads),
            "turtle" => Ok(Format::Turtle),
            other => Format::from_extension(other).ok_or_else(|| UnknownFormat(s.to_owned())),
        }
    }
}

/// The name of a graph in an N-Quads document.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum GraphName {
    /// The default graph (no graph name; all of N-Triples and Turtle).
    #[default]
    Default,
    /// A graph named by an IRI (a publisher's graph, typically).
    Named(Iri),
    /// A graph named by a blank node.
    Blank(BlankNode),
}

impl GraphName {
    /// A graph named by `iri`.
    pub fn named(iri: impl Into<String>) -> Result<Self, crate::TermError> {
        Iri::new(iri).map(GraphName::Named)
    }

    /// The name a [`BlankNodeScope::Graph`] scope is derived from: the graph name in N-Quads
    /// syntax (never asked of the default graph, whose labels are not scoped).
    fn scope_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for GraphName {
    /// N-Quads syntax; the default graph is shown as `(default graph)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphName::Default => f.write_str("(default graph)"),
            GraphName::Named(iri) => fmt::Display::fmt(iri, f),
            GraphName::Blank(b) => fmt::Display::fmt(b, f),
        }
    }
}

impl fmt::Debug for GraphName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Iri> for GraphName {
    fn from(value: Iri) -> Self {
        GraphName::Named(value)
    }
}
