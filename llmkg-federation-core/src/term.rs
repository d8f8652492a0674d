//! The knowledge-graph model: RDF terms, triples and change sets.
//!
//! Every value here is valid by construction: IRIs are checked against RFC 3987 (with the
//! few letters the Turtle grammar adds, see [`Iri`]), language
//! tags against BCP 47 (and normalized to lower case), blank-node labels against the label
//! grammar of N-Triples and Turtle (so every stored blank node can be written out and read
//! back), and triples against RDF's position rules (a literal never stands as
//! subject or predicate). Decoding applies the same checks and additionally rejects any
//! non-canonical form, so that one value has exactly one encoding — content ids depend on it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The datatype IRI of plain string literals.
pub const XSD_STRING: &str = "http://www.w3.org/2001/XMLSchema#string";
/// The datatype IRI of language-tagged literals.
pub const RDF_LANG_STRING: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString";

/// Longest accepted IRI, blank-node label, language tag or literal lexical form, in bytes.
///
/// Bounds every size a peer controls; 1 MiB is far beyond any real vocabulary.
pub const MAX_TERM_LEN: usize = 1 << 20;

/// A term, triple or change set was rejected. Nothing was constructed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TermError {
    /// The text is not an absolute IRI (RFC 3987, with the characters [`Iri`] adds).
    #[error("invalid IRI {iri:?}: {reason}")]
    InvalidIri {
        /// The rejected text (truncated to 200 bytes).
        iri: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The text is not a well-formed BCP 47 language tag.
    #[error("invalid language tag {tag:?}: {reason}")]
    InvalidLanguageTag {
        /// The rejected text (truncated to 200 bytes).
        tag: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A blank-node label does not match the Turtle/N-Triples label grammar (see
    /// [`BlankNode::new`]).
    #[error(
        "invalid blank node label {0:?}: expected a letter, digit or '_', then letters, digits, \
         '_', '-' or '.', not ending with '.'"
    )]
    InvalidBlankNode(String),
    /// A value is longer than [`MAX_TERM_LEN`].
    #[error("term of {len} bytes exceeds the limit of {MAX_TERM_LEN} bytes")]
    TooLong {
        /// The length of the rejected value.
        len: usize,
    },
    /// A literal was given the datatype `rdf:langString` without a language tag.
    #[error("a literal with datatype rdf:langString needs a language tag")]
    LangStringWithoutTag,
    /// Decoded data was valid but not in canonical form (for example a literal typed
    /// `xsd:string` explicitly, or an upper-case language tag).
    #[error("non-canonical encoding: {0}")]
    NonCanonical(&'static str),
    /// A literal was used as the subject of a triple.
    #[error("a triple's subject must be an IRI or a blank node, not a literal")]
    LiteralSubject,
    /// The predicate of a triple was not an IRI.
    #[error("a triple's predicate must be an IRI")]
    NonIriPredicate,
    /// A change set adds and removes the same triple.
    #[error("a change set both adds and removes {0}")]
    AddAndRemove(Box<Triple>),
}

fn truncated(s: &str) -> String {
    prefix_within(s, 200).to_owned()
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub(crate) fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn check_len(s: &str) -> Result<(), TermError> {
    if s.len() > MAX_TERM_LEN { Err(TermError::TooLong { len: s.len() }) } else { Ok(()) }
}

/// Writes shared text as a `str` (what `Box<str>` writes: the encoding is unchanged).
fn serialize_text<S: serde::Serializer>(text: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(text)
}

/// The text of a term as decoded: read straight into its shared allocation (from the input
/// when the format lends it), then checked by the term type's `TryFrom`.
struct Text(Arc<str>);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor(|v| Arc::from(v))).map(Text)
    }
}

/// The text of a literal's datatype or language tag as decoded: a few of them qualify most
/// literals, so equal ones decoded on a thread share one text ([`recent_text`]).
struct QualifierText(Arc<str>);

impl<'de> Deserialize<'de> for QualifierText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(TextVisitor(recent_text)).map(QualifierText)
    }
}

/// Reads a string into the shared allocation its function gives.
struct TextVisitor(fn(&str) -> Arc<str>);

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = Arc<str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Arc<str>, E> {
        Ok((self.0)(v))
    }
}

/// How many datatypes and language tags a thread remembers, and the longest it keeps: a
/// bounded cache whatever a peer sends (at most 16 × 256 bytes per thread).
const RECENT_SLOTS: usize = 16;
const RECENT_MAX_LEN: usize = 256;

/// `text` in a shared allocation, the same one as the last equal text this thread decoded
/// into the same slot (slots are picked by hash): the literals of a decoded change set then
/// hold their datatypes and language tags once, not once each.
fn recent_text(text: &str) -> Arc<str> {
    use std::cell::RefCell;
    use std::hash::BuildHasher;
    thread_local! {
        static RECENT: RefCell<[Option<Arc<str>>; RECENT_SLOTS]> =
            const { RefCell::new([const { None }; RECENT_SLOTS]) };
    }
    if text.len() > RECENT_MAX_LEN {
        return Arc::from(text);
    }
    let slot = foldhash::fast::FixedState::default().hash_one(text) as usize % RECENT_SLOTS;
    RECENT.with_borrow_mut(|recent| match recent.get_mut(slot) {
        Some(Some(known)) if **known == *text => Arc::clone(known),
        Some(entry) => {
            let fresh: Arc<str> = Arc::from(text);
            *entry = Some(Arc::clone(&fresh));
            fresh
        }
        None => Arc::from(text),
    })
}

/// Decodes a literal's datatype (see [`QualifierText`]).
fn deserialize_datatype<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Iri, D::Error> {
    let text = QualifierText::deserialize(deserializer)?;
    Iri::try_from(Text(text.0)).map_err(serde::de::Error::custom)
}

/// An absolute IRI, validated against RFC 3987, with the few letters the Turtle grammar adds.
///
/// Turtle's `PN_CHARS_BASE` lets a prefixed name's local part, and so an IRI, hold a few code
/// points that RFC 3987's `ucschar` leaves out: U+FFF0 to U+FFFD, U+E0000 to U+E0FFF (tags and
/// variation selectors), and the last two code points of planes 1 to 14 (U+1FFFE, U+1FFFF,
/// ..., U+EFFFF). They are accepted wherever RFC 3987 accepts a `ucschar` (path, query,
/// fragment, user info, host name), so every IRI a Turtle document can name is an `Iri`.
/// Everything else RFC 3987 refuses still is refused: relative references, characters in the
/// wrong component, spaces, controls, the characters N-Triples and Turtle exclude from an IRI
/// (`<`, `>`, `"`, `{`, `}`, `|`, `^`, the backquote, `\`), malformed percent-encodings.
///
/// ```
/// use llmkg_federation_core::Iri;
/// let name = Iri::new("http://xmlns.com/foaf/0.1/name")?;
/// assert_eq!(name.as_str(), "http://xmlns.com/foaf/0.1/name");
/// assert!(Iri::new("not an iri").is_err());
/// assert!(Iri::new("http://a.example/\u{E01EF}").is_ok()); // a Turtle local-name letter
/// assert!(Iri::new("http://a.example/a b").is_err());
/// # Ok::<(), llmkg_federation_core::TermError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "Text")]
pub struct Iri(Arc<str>);

/// Written as its text, borrowed (the encoding of a `String`, without copying it into one).
impl Serialize for Iri {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A code point of Turtle's `PN_CHARS_BASE` that is not an RFC 3987 `ucschar` (nor ASCII):
/// U+FFF0..=U+FFFD, U+E0000..=U+E0FFF and U+xFFFE, U+xFFFF of planes 1 to 14.
fn is_turtle_only_iri_char(c: char) -> bool {
    let c = u32::from(c);
    matches!(c, 0xFFF0..=0xFFFD | 0xE0000..=0xE0FFF)
        || ((0x1_0000..=0xE_FFFF).contains(&c) && c & 0xFFFE == 0xFFFE)
}

impl Iri {
    /// Validates `iri` as an absolute IRI (see [`Iri`] for the characters accepted beyond
    /// RFC 3987).
    pub fn new(iri: impl Into<String>) -> Result<Self, TermError> {
        let iri: String = iri.into();
        Self::check(&iri)?;
        Ok(Self(Arc::from(iri)))
    }

    /// An IRI from text that [`Iri::new`] has already accepted (the RDF importer checks each
    /// distinct IRI once and reuses the verdict and the text).
    #[cfg(feature = "rdf")]
    pub(crate) fn from_checked(iri: Arc<str>) -> Self {
        debug_assert!(Iri::check(&iri).is_ok());
        Self(iri)
    }

    /// The shared text (a clone of the IRI costs a reference count, not a copy).
    #[cfg(feature = "rdf")]
    pub(crate) fn shared_text(&self) -> &Arc<str> {
        &self.0
    }

    /// Checks `iri` as [`Iri::new`] does.
    fn check(iri: &str) -> Result<(), TermError> {
        check_len(iri)?;
        let error = match oxiri::Iri::parse(iri) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        // The characters Turtle adds are accepted where RFC 3987 accepts a `ucschar`: the IRI
        // is checked again with each of them replaced by one (U+00C0, a letter in both
        // grammars). The error reported is the one of the IRI as given.
        if iri.contains(is_turtle_only_iri_char) {
            let stand_in: String = iri
                .chars()
                .map(|c| if is_turtle_only_iri_char(c) { '\u{C0}' } else { c })
                .collect();
            if oxiri::Iri::parse(stand_in.as_str()).is_ok() {
                return Ok(());
            }
        }
        Err(TermError::InvalidIri { iri: truncated(iri), reason: error.to_string() })
    }

    /// The IRI text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Iri {
    type Error = TermError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<Text> for Iri {
    type Error = TermError;
    fn try_from(text: Text) -> Result<Self, Self::Error> {
        Self::check(&text.0)?;
        Ok(Self(text.0))
    }
}

impl From<Iri> for String {
    fn from(value: Iri) -> Self {
        value.0.as_ref().into()
    }
}

impl fmt::Display for Iri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

impl fmt::Debug for Iri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A blank node, identified by a label.
///
/// Labels follow the blank-node label grammar shared by N-Triples, N-Quads and Turtle
/// (`BLANK_NODE_LABEL` without its `_:`): a letter, digit or `_` first, then letters, digits,
/// `_`, `-`, `.` and the few combining characters the grammar allows, not ending with `.`
/// ("letters" include the non-ASCII ranges of `PN_CHARS_BASE`). So every blank node can be
/// written in each of those formats and read back unchanged.
///
/// Labels are stored as given: two blank nodes are the same node exactly when their labels are
/// equal. How the RDF importer derives labels (and scopes them) is documented in the `rdf`
/// module; this type does not rename anything.
///
/// ```
/// use llmkg_federation_core::BlankNode;
/// assert!(BlankNode::new("b0").is_ok());
/// assert!(BlankNode::new("c14n.0-x").is_ok());
/// assert!(BlankNode::new("a.").is_err()); // cannot end with '.'
/// assert!(BlankNode::new("-a").is_err()); // cannot start with '-'
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "Text")]
pub struct BlankNode(Arc<str>);

/// Written as its text, borrowed (the encoding of a `String`, without copying it into one).
impl Serialize for BlankNode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// `PN_CHARS_BASE` of the Turtle grammar.
fn is_pn_chars_base(c: char) -> bool {
    matches!(c,
        'A'..='Z'
        | 'a'..='z'
        | '\u{00C0}'..='\u{00D6}'
        | '\u{00D8}'..='\u{00F6}'
        | '\u{00F8}'..='\u{02FF}'
        | '\u{0370}'..='\u{037D}'
        | '\u{037F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}'
        | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}'
        | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// `PN_CHARS_U` of the Turtle grammar.
fn is_pn_chars_u(c: char) -> bool {
    is_pn_chars_base(c) || c == '_'
}

/// `PN_CHARS` of the Turtle grammar.
fn is_pn_chars(c: char) -> bool {
    is_pn_chars_u(c)
        || matches!(c, '-' | '0'..='9' | '\u{00B7}' | '\u{0300}'..='\u{036F}' | '\u{203F}'..='\u{2040}')
}

/// The body of `BLANK_NODE_LABEL`: `(PN_CHARS_U | [0-9]) ((PN_CHARS | '.')* PN_CHARS)?`.
fn is_blank_node_label(label: &str) -> bool {
    let mut chars = label.chars();
    let Some(first) = chars.next() else { return false };
    (is_pn_chars_u(first) || first.is_ascii_digit())
        && chars.all(|c| is_pn_chars(c) || c == '.')
        && !label.ends_with('.')
}

/// A Turtle prefix name: `PN_PREFIX ::= PN_CHARS_BASE ((PN_CHARS | '.')* PN_CHARS)?`, or empty.
#[cfg(feature = "rdf")]
pub(crate) fn is_pn_prefix(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        None => true,
        Some(first) => {
            is_pn_chars_base(first)
                && chars.all(|c| is_pn_chars(c) || c == '.')
                && !name.ends_with('.')
        }
    }
}

impl BlankNode {
    /// Validates `label` (without the `_:` prefix) against the label grammar above.
    pub fn new(label: impl Into<String>) -> Result<Self, TermError> {
        let label: String = label.into();
        Self::check(&label)?;
        Ok(Self(Arc::from(label)))
    }

    /// Checks `label` as [`BlankNode::new`] does.
    fn check(label: &str) -> Result<(), TermError> {
        check_len(label)?;
        if is_blank_node_label(label) {
            Ok(())
        } else {
            Err(TermError::InvalidBlankNode(truncated(label)))
        }
    }

    /// The label, without the `_:` prefix.
    pub fn label(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlankNode {
    type Error = TermError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<Text> for BlankNode {
    type Error = TermError;
    fn try_from(text: Text) -> Result<Self, Self::Error> {
        Self::check(&text.0)?;
        Ok(Self(text.0))
    }
}

impl From<BlankNode> for String {
    fn from(value: BlankNode) -> Self {
        value.0.as_ref().into()
    }
}

impl fmt::Display for BlankNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "_:{}", self.0)
    }
}

impl fmt::Debug for BlankNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A BCP 47 language tag, normalized to lower case (RDF compares tags case-insensitively).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "QualifierText")]
pub struct LanguageTag(Arc<str>);

/// Written as its text, borrowed (the encoding of a `String`, without copying it into one).
impl Serialize for LanguageTag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl LanguageTag {
    /// Validates `tag` and normalizes it to lower case.
    pub fn new(tag: impl Into<String>) -> Result<Self, TermError> {
        let tag: String = tag.into();
        Self::check(&tag)?;
        Ok(Self(Arc::from(tag.to_ascii_lowercase())))
    }

    /// Checks `tag` as [`LanguageTag::new`] does (in any case).
    fn check(tag: &str) -> Result<(), TermError> {
        check_len(tag)?;
        match oxilangtag::LanguageTag::parse(tag) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(TermError::InvalidLanguageTag { tag: truncated(tag), reason: e.to_string() })
            }
        }
    }

    /// The tag text (lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LanguageTag {
    type Error = TermError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::try_from(QualifierText(Arc::from(value)))
    }
}

impl TryFrom<QualifierText> for LanguageTag {
    type Error = TermError;
    fn try_from(text: QualifierText) -> Result<Self, Self::Error> {
        if text.0.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(TermError::NonCanonical("language tags are encoded in lower case"));
        }
        Self::check(&text.0)?;
        Ok(Self(text.0))
    }
}

impl From<LanguageTag> for String {
    fn from(value: LanguageTag) -> Self {
        value.0.as_ref().into()
    }
}

impl fmt::Debug for LanguageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What qualifies a literal's lexical form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum LiteralKind {
    /// A plain string: datatype `xsd:string`.
    String,
    /// A datatype other than `xsd:string` and `rdf:langString`.
    Typed(#[serde(deserialize_with = "deserialize_datatype")] Iri),
    /// A language-tagged string: datatype `rdf:langString`.
    Language(LanguageTag),
}

/// A literal: a lexical form with a datatype or a language tag.
///
/// The canonical representation of `"x"^^xsd:string` is [`LiteralKind::String`]: constructing
/// a literal typed `xsd:string` yields exactly the same value as [`Literal::string`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawLiteral")]
pub struct Literal {
    #[serde(serialize_with = "serialize_text")]
    value: Arc<str>,
    kind: LiteralKind,
}

#[derive(Deserialize)]
struct RawLiteral {
    value: Text,
    kind: LiteralKind,
}

impl TryFrom<RawLiteral> for Literal {
    type Error = TermError;
    fn try_from(raw: RawLiteral) -> Result<Self, Self::Error> {
        check_len(&raw.value.0)?;
        if let LiteralKind::Typed(dt) = &raw.kind {
            if dt.as_str() == XSD_STRING {
                return Err(TermError::NonCanonical("xsd:string literals use LiteralKind::String"));
            }
            if dt.as_str() == RDF_LANG_STRING {
                return Err(TermError::LangStringWithoutTag);
            }
        }
        Ok(Self { value: raw.value.0, kind: raw.kind })
    }
}

impl Literal {
    /// A plain string literal (`xsd:string`).
    pub fn string(value: impl Into<String>) -> Result<Self, TermError> {
        let value: String = value.into();
        check_len(&value)?;
        Ok(Self { value: Arc::from(value), kind: LiteralKind::String })
    }

    /// A literal with a datatype. `xsd:string` gives the same value as [`Literal::string`];
    /// `rdf:langString` is rejected because it needs a language tag.
    pub fn typed(value: impl Into<String>, datatype: Iri) -> Result<Self, TermError> {
        let value: String = value.into();
        check_len(&value)?;
        let kind = match datatype.as_str() {
            XSD_STRING => LiteralKind::String,
            RDF_LANG_STRING => return Err(TermError::LangStringWithoutTag),
            _ => LiteralKind::Typed(datatype),
        };
        Ok(Self { value: Arc::from(value), kind })
    }

    /// A language-tagged string literal. The tag is validated and lower-cased.
    pub fn language(value: impl Into<String>, tag: &str) -> Result<Self, TermError> {
        let value: String = value.into();
        check_len(&value)?;
        Ok(Self { value: Arc::from(value), kind: LiteralKind::Language(LanguageTag::new(tag)?) })
    }

    /// A language-tagged string literal with an already validated tag.
    #[cfg(feature = "rdf")]
    pub(crate) fn with_language_tag(
        value: impl Into<String>,
        tag: LanguageTag,
    ) -> Result<Self, TermError> {
        let value: String = value.into();
        check_len(&value)?;
        Ok(Self { value: Arc::from(value), kind: LiteralKind::Language(tag) })
    }

    /// The lexical form.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// The datatype or language tag.
    pub fn kind(&self) -> &LiteralKind {
        &self.kind
    }

    /// The datatype IRI as text (`xsd:string` and `rdf:langString` included).
    pub fn datatype(&self) -> &str {
        match &self.kind {
            LiteralKind::String => XSD_STRING,
            LiteralKind::Typed(iri) => iri.as_str(),
            LiteralKind::Language(_) => RDF_LANG_STRING,
        }
    }

    /// The language tag, for language-tagged strings.
    pub fn language_tag(&self) -> Option<&str> {
        match &self.kind {
            LiteralKind::Language(tag) => Some(tag.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for Literal {
    /// N-Triples syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.value.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")?;
        match &self.kind {
            LiteralKind::String => Ok(()),
            LiteralKind::Typed(dt) => write!(f, "^^{dt}"),
            LiteralKind::Language(tag) => write!(f, "@{}", tag.as_str()),
        }
    }
}

impl fmt::Debug for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An RDF term: an IRI, a blank node or a literal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Term {
    /// An IRI.
    Iri(Iri),
    /// A blank node.
    Blank(BlankNode),
    /// A literal.
    Literal(Literal),
}

impl Term {
    /// Shorthand for `Term::Iri(Iri::new(iri)?)`.
    pub fn iri(iri: impl Into<String>) -> Result<Self, TermError> {
        Iri::new(iri).map(Term::Iri)
    }

    /// Shorthand for `Term::Blank(BlankNode::new(label)?)`.
    pub fn blank(label: impl Into<String>) -> Result<Self, TermError> {
        BlankNode::new(label).map(Term::Blank)
    }

    /// Shorthand for a plain string literal.
    pub fn string(value: impl Into<String>) -> Result<Self, TermError> {
        Literal::string(value).map(Term::Literal)
    }

    /// The IRI, if this term is one.
    pub fn as_iri(&self) -> Option<&Iri> {
        match self {
            Term::Iri(iri) => Some(iri),
            _ => None,
        }
    }
}

impl fmt::Display for Term {
    /// N-Triples syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Iri(t) => fmt::Display::fmt(t, f),
            Term::Blank(t) => fmt::Display::fmt(t, f),
            Term::Literal(t) => fmt::Display::fmt(t, f),
        }
    }
}

impl fmt::Debug for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Iri> for Term {
    fn from(value: Iri) -> Self {
        Term::Iri(value)
    }
}

impl From<BlankNode> for Term {
    fn from(value: BlankNode) -> Self {
        Term::Blank(value)
    }
}

impl From<Literal> for Term {
    fn from(value: Literal) -> Self {
        Term::Literal(value)
    }
}

/// An RDF triple. The subject is an IRI or a blank node and the predicate an IRI.
///
/// ```
/// use llmkg_federation_core::{Iri, Literal, Triple};
/// let t = Triple::new(
///     Iri::new("https://example.org/alice")?,
///     Iri::new("http://xmlns.com/foaf/0.1/name")?,
///     Literal::string("Alice")?,
/// )?;
/// assert_eq!(
///     t.to_string(),
///     "<https://example.org/alice> <http://xmlns.com/foaf/0.1/name> \"Alice\" ."
/// );
/// # Ok::<(), llmkg_federation_core::TermError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawTriple")]
pub struct Triple {
    subject: Term,
    predicate: Term,
    object: Term,
}

#[derive(Deserialize)]
struct RawTriple {
    subject: Term,
    predicate: Term,
    object: Term,
}

impl TryFrom<RawTriple> for Triple {
    type Error = TermError;
    fn try_from(raw: RawTriple) -> Result<Self, Self::Error> {
        Triple::new(raw.subject, raw.predicate, raw.object)
    }
}

impl Triple {
    /// Builds a triple, checking the position rules.
    pub fn new(
        subject: impl Into<Term>,
        predicate: impl Into<Term>,
        object: impl Into<Term>,
    ) -> Result<Self, TermError> {
        let (subject, predicate, object) = (subject.into(), predicate.into(), object.into());
        if matches!(subject, Term::Literal(_)) {
            return Err(TermError::LiteralSubject);
        }
        if !matches!(predicate, Term::Iri(_)) {
            return Err(TermError::NonIriPredicate);
        }
        Ok(Self { subject, predicate, object })
    }

    /// Builds a triple from parts already known to satisfy the position rules (they come
    /// from a triple that did).
    pub(crate) fn from_valid_parts(subject: Term, predicate: Term, object: Term) -> Self {
        debug_assert!(!matches!(subject, Term::Literal(_)) && matches!(predicate, Term::Iri(_)));
        Self { subject, predicate, object }
    }

    /// The subject (an IRI or a blank node).
    pub fn subject(&self) -> &Term {
        &self.subject
    }

    /// The predicate (an IRI).
    pub fn predicate(&self) -> &Term {
        &self.predicate
    }

    /// The object.
    pub fn object(&self) -> &Term {
        &self.object
    }

    /// The subject, predicate and object, moved out.
    pub(crate) fn into_parts(self) -> (Term, Term, Term) {
        (self.subject, self.predicate, self.object)
    }

    /// The content id of this triple.
    pub fn id(&self) -> crate::TripleId {
        crate::TripleId::of(self)
    }
}

impl fmt::Display for Triple {
    /// One N-Triples statement.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} .", self.subject, self.predicate, self.object)
    }
}

impl fmt::Debug for Triple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A set of triples to add and a set to remove.
///
/// Both sets are kept sorted and free of duplicates, so that equal change sets have equal
/// encodings; a triple may not be in both. Applied to a state, removals and additions
/// commute because the sets are disjoint.
///
/// ```
/// use llmkg_federation_core::{ChangeSet, Iri, Triple};
/// let p = Iri::new("https://example.org/p")?;
/// let t = |s: &str| Triple::new(Iri::new(s).unwrap(), p.clone(), Iri::new(s).unwrap());
/// let changes = ChangeSet::new([t("urn:b")?, t("urn:a")?, t("urn:a")?], [t("urn:c")?])?;
/// assert_eq!(changes.added().len(), 2);
/// assert!(ChangeSet::new([t("urn:a")?], [t("urn:a")?]).is_err());
/// # Ok::<(), llmkg_federation_core::TermError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawChangeSet")]
pub struct ChangeSet {
    add: Vec<Triple>,
    remove: Vec<Triple>,
}

#[derive(Deserialize)]
struct RawChangeSet {
    add: Vec<Triple>,
    remove: Vec<Triple>,
}

impl TryFrom<RawChangeSet> for ChangeSet {
    type Error = TermError;
    fn try_from(raw: RawChangeSet) -> Result<Self, Self::Error> {
        let sorted = |v: &[Triple]| v.windows(2).all(|w| matches!(w, [a, b] if a < b));
        if !sorted(&raw.add) || !sorted(&raw.remove) {
            return Err(TermError::NonCanonical("change sets are sorted and duplicate-free"));
        }
        let set = ChangeSet { add: raw.add, remove: raw.remove };
        set.check_disjoint()?;
        Ok(set)
    }
}

impl ChangeSet {
    /// Builds a change set, sorting and de-duplicating both sides. Fails if a triple is both
    /// added and removed.
    pub fn new(
        add: impl IntoIterator<Item = Triple>,
        remove: impl IntoIterator<Item = Triple>,
    ) -> Result<Self, TermError> {
        let mut add: Vec<Triple> = add.into_iter().collect();
        let mut remove: Vec<Triple> = remove.into_iter().collect();
        add.sort_unstable();
        add.dedup();
        remove.sort_unstable();
        remove.dedup();
        let set = ChangeSet { add, remove };
        set.check_disjoint()?;
        Ok(set)
    }

    /// A change set that only adds.
    pub fn adding(add: impl IntoIterator<Item = Triple>) -> Self {
        let mut add: Vec<Triple> = add.into_iter().collect();
        add.sort_unstable();
        add.dedup();
        ChangeSet { add, remove: Vec::new() }
    }

    /// A change set that only removes.
    pub fn removing(remove: impl IntoIterator<Item = Triple>) -> Self {
        let mut remove: Vec<Triple> = remove.into_iter().collect();
        remove.sort_unstable();
        remove.dedup();
        ChangeSet { add: Vec::new(), remove }
    }

    /// Builds from vectors already sorted and duplicate-free, as produced by this crate.
    pub(crate) fn from_sorted(add: Vec<Triple>, remove: Vec<Triple>) -> Self {
        debug_assert!(add.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(remove.windows(2).all(|w| w[0] < w[1]));
        ChangeSet { add, remove }
    }

    fn check_disjoint(&self) -> Result<(), TermError> {
        // Both sides are sorted: a linear merge finds a common element.
        let (mut i, mut j) = (self.add.iter().peekable(), self.remove.iter().peekable());
        while let (Some(a), Some(r)) = (i.peek(), j.peek()) {
            match a.cmp(r) {
                std::cmp::Ordering::Less => {
                    i.next();
                }
                std::cmp::Ordering::Greater => {
                    j.next();
                }
                std::cmp::Ordering::Equal => {
                    return Err(TermError::AddAndRemove(Box::new((*a).clone())));
                }
            }
        }
        Ok(())
    }

    /// The triples added and the triples removed, each sorted.
    pub fn into_parts(self) -> (Vec<Triple>, Vec<Triple>) {
        (self.add, self.remove)
    }

    /// The triples added, sorted.
    pub fn added(&self) -> &[Triple] {
        &self.add
    }

    /// The triples removed, sorted.
    pub fn removed(&self) -> &[Triple] {
        &self.remove
    }

    /// True when nothing is added or removed.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Number of triples added plus removed.
    pub fn len(&self) -> usize {
        self.add.len() + self.remove.len()
    }

    /// The change set that undoes this one.
    pub fn inverse(&self) -> ChangeSet {
        ChangeSet { add: self.remove.clone(), remove: self.add.clone() }
    }
}

impl fmt::Debug for ChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeSet").field("add", &self.add).field("remove", &self.remove).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(iri: &str) -> bool {
        Iri::new(iri).is_ok()
    }

    /// The W3C Turtle test `localName_with_assigned_nfc_PN_CHARS_BASE_character_boundaries`
    /// names an IRI ending in U+E01EF, a `PN_CHARS_BASE` letter outside RFC 3987's `ucschar`.
    #[test]
    fn iri_accepts_the_turtle_local_name_letters() {
        let w3c = "http://a.example/AZaz\u{C0}\u{D6}\u{D8}\u{F6}\u{F8}\u{2FF}\u{370}\u{37D}\
                   \u{384}\u{1FFE}\u{200C}\u{200D}\u{2070}\u{2189}\u{2C00}\u{2FD5}\u{3001}\
                   \u{D7FB}\u{FA0E}\u{FDC7}\u{FDF0}\u{FFEF}\u{10000}\u{E01EF}";
        assert!(accepted(w3c));
        for c in [
            '\u{FFF0}',
            '\u{FFFD}',
            '\u{1FFFE}',
            '\u{1FFFF}',
            '\u{E0000}',
            '\u{E0FFF}',
            '\u{EFFFF}',
        ] {
            assert!(is_turtle_only_iri_char(c), "{c:?}");
            for iri in [
                format!("http://a.example/{c}"),
                format!("http://a.example/p?{c}#{c}"),
                format!("http://u{c}@h{c}.example/"),
            ] {
                assert!(accepted(&iri), "{iri:?}");
            }
        }
        // Their neighbours in ucschar were accepted before and still are.
        for c in ['\u{FFEF}', '\u{1FFFD}', '\u{E1000}', '\u{EFFFD}'] {
            assert!(!is_turtle_only_iri_char(c) && accepted(&format!("http://a.example/{c}")));
        }
        // U+FFFE and U+FFFF are not in PN_CHARS_BASE, nor are planes 15 and 16 (private use,
        // which RFC 3987 allows in a query only).
        for c in ['\u{FFFE}', '\u{FFFF}', '\u{F0000}', '\u{10FFFD}'] {
            assert!(!is_turtle_only_iri_char(c), "{c:?}");
            assert!(!accepted(&format!("http://a.example/{c}")), "{c:?}");
        }
    }

    /// What RDF forbids is still a typed error, whatever the characters.
    #[test]
    fn iri_still_rejects_what_rdf_forbids() {
        let e = '\u{E01EF}';
        for iri in [
            format!("a/{e}"),                  // relative
            format!("{e}:x"),                  // not a scheme character
            format!("h{e}ttp://a.example/"),   // in the scheme
            format!("http://a.example/{e} x"), // a space
            format!("http://a.example/{e}<"),  // a character IRIREF excludes
            format!("http://a.example/{e}%zz"),
            format!("http://[{e}]/"),               // in an IP literal
            format!("http://a.example/\u{80}{e}"),  // a C1 control
            "http://a.example/\u{FFFE}".to_owned(), // a BMP non-character
        ] {
            match Iri::new(iri.as_str()) {
                Err(TermError::InvalidIri { reason, .. }) => {
                    assert!(!reason.is_empty(), "{iri:?}")
                }
                other => panic!("{iri:?}: expected InvalidIri, got {other:?}"),
            }
        }
        // Decoding applies the same check.
        let bytes = postcard::to_allocvec(&format!("a/{e}")).unwrap();
        assert!(postcard::from_bytes::<Iri>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&format!("http://a.example/{e}")).unwrap();
        assert_eq!(
            postcard::from_bytes::<Iri>(&bytes).unwrap().as_str(),
            format!("http://a.example/{e}")
        );
    }
}
