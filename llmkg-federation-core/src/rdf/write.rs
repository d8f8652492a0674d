//! Streaming export of a state in deterministic order.

use std::io::{BufWriter, Write};

use oxrdf::TripleRef as OxTripleRef;
use oxttl::{NQuadsSerializer, NTriplesSerializer, TurtleSerializer};
use thiserror::Error;

use super::{Format, GraphName};
use crate::commit::CommitId;
use crate::graph::GraphState;
use crate::repo::{RepoError, Repository};
use crate::store::Store;
use crate::term::{Iri, is_pn_prefix};

/// An export failed. The repository is unchanged; the writer may hold a partial document.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Writing failed.
    #[error("writing the export failed: {0}")]
    Io(#[from] std::io::Error),
    /// The commit's state could not be materialized.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A Turtle prefix name is not a valid `PN_PREFIX`, or its IRI was rejected.
    #[error("invalid prefix {name:?}: {reason}")]
    InvalidPrefix {
        /// The prefix name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Options of [`write()`] and [`Repository::export`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    graph: GraphName,
    prefixes: Vec<(String, Iri)>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self::new()
    }
}

const STANDARD_PREFIXES: [(&str, &str); 4] = [
    ("owl", "http://www.w3.org/2002/07/owl#"),
    ("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"),
    ("rdfs", "http://www.w3.org/2000/01/rdf-schema#"),
    ("xsd", "http://www.w3.org/2001/XMLSchema#"),
];

impl ExportOptions {
    /// N-Quads into the default graph; Turtle with the prefixes `owl`, `rdf`, `rdfs`, `xsd`.
    pub fn new() -> Self {
        let prefixes = STANDARD_PREFIXES
            .iter()
            .filter_map(|(p, iri)| Some(((*p).to_owned(), Iri::new(*iri).ok()?)))
            .collect();
        Self { graph: GraphName::Default, prefixes }
    }

    /// The graph every N-Quads statement is written into.
    pub fn graph(mut self, graph: GraphName) -> Self {
        self.graph = graph;
        self
    }

    /// Adds (or redefines) a Turtle prefix. `name` must be a Turtle `PN_PREFIX` (letters,
    /// digits, `_`, `-`, `.`, starting with a letter, not ending with `.`) or empty.
    pub fn prefix(mut self, name: &str, iri: Iri) -> Result<Self, ExportError> {
        if !is_pn_prefix(name) {
            return Err(ExportError::InvalidPrefix {
                name: name.to_owned(),
                reason: "not a Turtle prefix name".into(),
            });
        }
        self.prefixes.retain(|(p, _)| p != name);
        self.prefixes.push((name.to_owned(), iri));
        Ok(self)
    }

    /// Removes every Turtle prefix (IRIs are then written in full).
    pub fn without_prefixes(mut self) -> Self {
        self.prefixes.clear();
        self
    }
}

/// Writes every triple of `state` to `writer` in `format`, in `Triple` order (subject,
/// predicate, object), so equal states give identical bytes. Returns the number of triples
/// written. The writer is buffered internally and flushed at the end.
///
/// ```
/// use llmkg_federation_core::rdf::{ExportOptions, Format, write};
/// use llmkg_federation_core::{GraphState, Term, Triple};
/// let mut state = GraphState::new();
/// state.insert(&Triple::new(Term::iri("urn:a")?, Term::iri("urn:p")?, Term::blank("b0")?)?)?;
/// let mut out = Vec::new();
/// write(&state, &mut out, Format::NTriples, &ExportOptions::new())?;
/// assert_eq!(String::from_utf8(out)?, "<urn:a> <urn:p> _:b0 .\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write(
    state: &GraphState,
    writer: impl Write,
    format: Format,
    options: &ExportOptions,
) -> Result<u64, ExportError> {
    let mut out = BufWriter::with_capacity(1 << 16, writer);
    let mut n = 0u64;
    match format {
        Format::NTriples => {
            let mut s = NTriplesSerializer::new().for_writer(&mut out);
            for t in state.iter_sorted() {
                s.serialize_triple(OxTripleRef::from(t))?;
                n += 1;
            }
            s.finish();
        }
        Format::NQuads => {
            let graph = oxrdf::GraphNameRef::from(&options.graph);
            let mut s = NQuadsSerializer::new().for_writer(&mut out);
            for t in state.iter_sorted() {
                s.serialize_quad(OxTripleRef::from(t).in_graph(graph))?;
                n += 1;
            }
            s.finish();
        }
        Format::Turtle => {
            let mut serializer = TurtleSerializer::new();
            for (name, iri) in &options.prefixes {
                serializer = serializer.with_prefix(name.as_str(), iri.as_str()).map_err(|e| {
                    ExportError::InvalidPrefix { name: name.clone(), reason: e.to_string() }
                })?;
            }
            let mut s = serializer.for_writer(&mut out);
            for t in state.iter_sorted() {
                s.serialize_triple(OxTripleRef::from(t))?;
                n += 1;
            }
            s.finish()?;
        }
    }
    out.flush()?;
    Ok(n)
}

impl<S: Store> Repository<S> {
    /// Writes the state at commit `at` to `writer` in `format` (see [`write()`]). The state
    /// is reached from the nearest cached state or checkpoint, every step verified (see
    /// [`Repository::state_at`]).
    pub fn export(
        &mut self,
        at: CommitId,
        writer: impl Write,
        format: Format,
        options: &ExportOptions,
    ) -> Result<u64, ExportError> {
        let state = self.state_at(at)?;
        write(state, writer, format, options)
    }
}
