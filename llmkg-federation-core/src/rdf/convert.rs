//! Conversions between the core terms and [`oxrdf`]'s.
//!
//! Core → oxrdf is infallible and, through the `*Ref` types, allocation-free: every core
//! value is valid for oxrdf (IRIs are RFC 3987 IRIs, language tags are lower-case BCP 47 tags,
//! blank-node labels follow the same grammar). The one exception is an IRI holding one of the
//! few Turtle local-name letters that RFC 3987 lacks (see [`Iri`]): oxrdf's checked
//! `NamedNode::new` would refuse it, the unchecked constructor used here carries it through
//! unchanged. oxrdf → core goes through the checked core
//! constructors and fails with a [`TermError`] where the core model is stricter (a value
//! longer than [`MAX_TERM_LEN`](crate::MAX_TERM_LEN), a literal typed `rdf:langString`).

use oxrdf::{
    BlankNodeRef, LiteralRef, NamedNodeRef, NamedOrBlankNode, NamedOrBlankNodeRef, TermRef,
    TripleRef as OxTripleRef,
};

use super::GraphName;
use crate::graph::TripleRef;
use crate::term::{BlankNode, Iri, Literal, LiteralKind, Term, TermError, Triple};

impl<'a> From<&'a Iri> for NamedNodeRef<'a> {
    fn from(value: &'a Iri) -> Self {
        NamedNodeRef::new_unchecked(value.as_str())
    }
}

impl<'a> From<&'a BlankNode> for BlankNodeRef<'a> {
    fn from(value: &'a BlankNode) -> Self {
        BlankNodeRef::new_unchecked(value.label())
    }
}

impl<'a> From<&'a Literal> for LiteralRef<'a> {
    fn from(value: &'a Literal) -> Self {
        match value.kind() {
            LiteralKind::String => LiteralRef::new_simple_literal(value.value()),
            LiteralKind::Typed(dt) => LiteralRef::new_typed_literal(value.value(), dt),
            LiteralKind::Language(tag) => {
                LiteralRef::new_language_tagged_literal_unchecked(value.value(), tag.as_str())
            }
        }
    }
}

impl<'a> From<&'a Term> for TermRef<'a> {
    fn from(value: &'a Term) -> Self {
        match value {
            Term::Iri(t) => NamedNodeRef::from(t).into(),
            Term::Blank(t) => BlankNodeRef::from(t).into(),
            Term::Literal(t) => LiteralRef::from(t).into(),
        }
    }
}

/// The subject of a valid triple as oxrdf's subject type.
fn subject_ref(term: &Term) -> NamedOrBlankNodeRef<'_> {
    match term {
        Term::Blank(b) => BlankNodeRef::from(b).into(),
        Term::Iri(i) => NamedNodeRef::from(i).into(),
        // Unreachable for a `Triple` (checked on construction); a literal's lexical form as
        // an IRI keeps this total without a panic.
        Term::Literal(l) => NamedNodeRef::new_unchecked(l.value()).into(),
    }
}

/// The predicate of a valid triple as an oxrdf IRI.
fn predicate_ref(term: &Term) -> NamedNodeRef<'_> {
    match term {
        Term::Iri(i) => i.into(),
        // Unreachable for a `Triple` (see `subject_ref`).
        Term::Blank(b) => NamedNodeRef::new_unchecked(b.label()),
        Term::Literal(l) => NamedNodeRef::new_unchecked(l.value()),
    }
}

impl<'a> From<&'a Triple> for OxTripleRef<'a> {
    fn from(value: &'a Triple) -> Self {
        OxTripleRef::new(
            subject_ref(value.subject()),
            predicate_ref(value.predicate()),
            TermRef::from(value.object()),
        )
    }
}

impl<'a> From<TripleRef<'a>> for OxTripleRef<'a> {
    fn from(value: TripleRef<'a>) -> Self {
        OxTripleRef::new(
            subject_ref(value.subject),
            predicate_ref(value.predicate),
            TermRef::from(value.object),
        )
    }
}

impl From<&Iri> for oxrdf::NamedNode {
    fn from(value: &Iri) -> Self {
        NamedNodeRef::from(value).into_owned()
    }
}

impl From<&BlankNode> for oxrdf::BlankNode {
    fn from(value: &BlankNode) -> Self {
        BlankNodeRef::from(value).into_owned()
    }
}

impl From<&Literal> for oxrdf::Literal {
    fn from(value: &Literal) -> Self {
        LiteralRef::from(value).into_owned()
    }
}

impl From<&Term> for oxrdf::Term {
    fn from(value: &Term) -> Self {
        TermRef::from(value).into_owned()
    }
}

impl From<&Triple> for oxrdf::Triple {
    fn from(value: &Triple) -> Self {
        OxTripleRef::from(value).into_owned()
    }
}

impl<'a> From<&'a GraphName> for oxrdf::GraphNameRef<'a> {
    fn from(value: &'a GraphName) -> Self {
        match value {
            GraphName::Default => oxrdf::GraphNameRef::DefaultGraph,
            GraphName::Named(i) => NamedNodeRef::from(i).into(),
            GraphName::Blank(b) => BlankNodeRef::from(b).into(),
        }
    }
}

impl TryFrom<oxrdf::NamedNode> for Iri {
    type Error = TermError;
    fn try_from(value: oxrdf::NamedNode) -> Result<Self, Self::Error> {
        Iri::new(value.into_string())
    }
}

impl TryFrom<oxrdf::BlankNode> for BlankNode {
    type Error = TermError;
    fn try_from(value: oxrdf::BlankNode) -> Result<Self, Self::Error> {
        BlankNode::new(value.into_string())
    }
}

impl TryFrom<oxrdf::Literal> for Literal {
    type Error = TermError;
    fn try_from(value: oxrdf::Literal) -> Result<Self, Self::Error> {
        match value.destruct() {
            (value, _, Some(tag)) => Literal::language(value, &tag),
            (value, Some(datatype), None) => Literal::typed(value, datatype.try_into()?),
            (value, None, None) => Literal::string(value),
        }
    }
}

impl TryFrom<oxrdf::Term> for Term {
    type Error = TermError;
    fn try_from(value: oxrdf::Term) -> Result<Self, Self::Error> {
        Ok(match value {
            oxrdf::Term::NamedNode(n) => Term::Iri(n.try_into()?),
            oxrdf::Term::BlankNode(b) => Term::Blank(b.try_into()?),
            oxrdf::Term::Literal(l) => Term::Literal(l.try_into()?),
        })
    }
}

impl TryFrom<NamedOrBlankNode> for Term {
    type Error = TermError;
    fn try_from(value: NamedOrBlankNode) -> Result<Self, Self::Error> {
        Ok(match value {
            NamedOrBlankNode::NamedNode(n) => Term::Iri(n.try_into()?),
            NamedOrBlankNode::BlankNode(b) => Term::Blank(b.try_into()?),
        })
    }
}

impl TryFrom<oxrdf::Triple> for Triple {
    type Error = TermError;
    fn try_from(value: oxrdf::Triple) -> Result<Self, Self::Error> {
        Triple::new(
            Term::try_from(value.subject)?,
            Iri::try_from(value.predicate)?,
            Term::try_from(value.object)?,
        )
    }
}

impl TryFrom<oxrdf::GraphName> for GraphName {
    type Error = TermError;
    fn try_from(value: oxrdf::GraphName) -> Result<Self, Self::Error> {
        Ok(match value {
            oxrdf::GraphName::DefaultGraph => GraphName::Default,
            oxrdf::GraphName::NamedNode(n) => GraphName::Named(n.try_into()?),
            oxrdf::GraphName::BlankNode(b) => GraphName::Blank(b.try_into()?),
        })
    }
}
