#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! Property tests: core terms ↔ oxrdf terms round-trip, through values and through text in
//! every format; the core blank-node grammar agrees with the RDF syntaxes'.

use llmkg_federation_core::rdf::{self, ExportOptions, Format, ImportOptions, oxrdf};
use llmkg_federation_core::{BlankNode, GraphState, Iri, Literal, Term, Triple};
use proptest::prelude::*;
use proptest::sample::select;

fn iri() -> impl Strategy<Value = Iri> {
    let pool = select(vec![
        "http://www.w3.org/1999/02/22-rdf-syntax-ns#type",
        "http://xmlns.com/foaf/0.1/name",
        "urn:isbn:0451450523",
        "https://example.org/a?b=c&d=e#f",
        "https://example.org/ü/🦀",
        "mailto:alice@example.org",
    ])
    .prop_map(str::to_owned);
    let http = "[a-z]{1,8}(/[A-Za-z0-9._~!$&'()*+,;=:@-]{0,10}|/%[0-9A-F]{2}){0,3}"
        .prop_map(|s| format!("https://{s}"));
    prop_oneof![pool, http].prop_map(|s| Iri::new(s).unwrap())
}

fn blank() -> impl Strategy<Value = BlankNode> {
    prop_oneof![
        select(vec!["b0", "c14n12", "x", "é.1", "_under", "0digit", "a·b"]).prop_map(str::to_owned),
        "[A-Za-z0-9_]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9_-])?",
    ]
    .prop_map(|s| BlankNode::new(s).unwrap())
}

fn literal() -> impl Strategy<Value = Literal> {
    let value = prop_oneof![
        "[ -~]{0,12}",
        any::<String>(),
        select(vec!["", "\"quoted\"", "back\\slash", "line\nbreak\r\t", "\u{0}\u{1f}\u{7f}"])
            .prop_map(str::to_owned),
    ];
    let datatype = select(vec![
        "http://www.w3.org/2001/XMLSchema#integer",
        "http://www.w3.org/2001/XMLSchema#string",
        "http://www.w3.org/2001/XMLSchema#boolean",
        "http://www.w3.org/2001/XMLSchema#decimal",
        "http://www.w3.org/2001/XMLSchema#double",
        "https://example.org/dt",
    ]);
    let tag = select(vec!["en", "de-CH", "EN-us", "zh-Hant-TW", "x-private"]);
    prop_oneof![
        value.clone().prop_map(|v| Literal::string(v).unwrap()),
        (value.clone(), datatype)
            .prop_map(|(v, d)| Literal::typed(v, Iri::new(d).unwrap()).unwrap()),
        (value, tag).prop_map(|(v, t)| Literal::language(v, t).unwrap()),
    ]
}

fn term() -> impl Strategy<Value = Term> {
    prop_oneof![
        iri().prop_map(Term::Iri),
        blank().prop_map(Term::Blank),
        literal().prop_map(Term::Literal),
    ]
}

fn triple() -> impl Strategy<Value = Triple> {
    let subject = prop_oneof![iri().prop_map(Term::Iri), blank().prop_map(Term::Blank)];
    (subject, iri(), term()).prop_map(|(s, p, o)| Triple::new(s, p, o).unwrap())
}

proptest! {
    #[test]
    fn terms_round_trip_through_oxrdf(t in term()) {
        let ox = oxrdf::Term::from(&t);
        prop_assert_eq!(ox.to_string(), oxrdf::TermRef::from(&t).to_string());
        prop_assert_eq!(Term::try_from(ox).unwrap(), t);
    }

    #[test]
    fn triples_round_trip_through_oxrdf(t in triple()) {
        let ox = oxrdf::Triple::from(&t);
        prop_assert_eq!(Triple::try_from(ox).unwrap(), t);
    }

    #[test]
    fn oxrdf_literals_convert_to_equal_core_literals(
        v in any::<String>(),
        tag in "[a-zA-Z]{2,8}(-[a-zA-Z0-9]{2,8}){0,2}",
    ) {
        // Only tags oxrdf accepts (well-formed BCP 47); the core must accept the same.
        let Ok(ox) = oxrdf::Literal::new_language_tagged_literal(v.clone(), tag.clone()) else {
            return Ok(());
        };
        let core = Literal::try_from(ox.clone()).unwrap();
        prop_assert_eq!(&core, &Literal::language(v, &tag).unwrap());
        prop_assert_eq!(oxrdf::Literal::from(&core), ox);
    }

    #[test]
    fn triples_round_trip_through_every_format(ts in proptest::collection::vec(triple(), 0..20)) {
        let mut state = GraphState::new();
        for t in &ts {
            state.insert(t).unwrap();
        }
        let expected = state.triples();
        for (format, options) in Format::ALL
            .into_iter()
            .map(|f| (f, ExportOptions::new()))
            .chain([(Format::Turtle, awkward_prefixes())])
        {
            let mut out = Vec::new();
            rdf::write(&state, &mut out, format, &options).unwrap();
            let back = rdf::read(out.as_slice(), format, ImportOptions::new())
                .unwrap_or_else(|e| panic!("{format}: {e}\n{}", String::from_utf8_lossy(&out)));
            prop_assert_eq!(&back.into_triples(), &expected, "{}", format);
        }
    }

    /// Core labels are exactly the labels N-Triples and Turtle can write: oxrdf's grammar
    /// minus ':' (which N-Triples allows and Turtle does not).
    #[test]
    fn blank_node_grammar_agrees_with_oxrdf(s in prop_oneof![
        "[A-Za-z0-9_.:·-]{0,6}",
        "\\PC{0,4}",
    ]) {
        let ours = BlankNode::new(s.clone()).is_ok();
        let theirs = oxrdf::BlankNode::new(s.clone()).is_ok() && !s.contains(':');
        prop_assert_eq!(ours, theirs, "{:?}", s);
    }
}

/// Prefixes under which the generated IRIs get local names that need escaping or cannot be
/// written as prefixed names at all (`/`, `%`, `?`, `#`, `~`, trailing dots, ...).
fn awkward_prefixes() -> ExportOptions {
    let iri = |s: &str| Iri::new(s).unwrap();
    ExportOptions::new()
        .prefix("h", iri("https://"))
        .unwrap()
        .prefix("", iri("https://example.org/"))
        .unwrap()
        .prefix("ex.a", iri("https://example.org/a"))
        .unwrap()
        .prefix("u", iri("urn:"))
        .unwrap()
        .prefix("m", iri("mailto:alice@"))
        .unwrap()
}

#[test]
fn literals_are_escaped_and_tagged_exactly() {
    let s = Term::iri("https://example.org/s").unwrap();
    let p = Term::iri("https://example.org/p").unwrap();
    let tricky = "say \"hi\"\n\ttab\\back\r é 🦀 \u{1}\u{7f}";
    let objects = [
        Term::Literal(Literal::string(tricky).unwrap()),
        Term::Literal(Literal::language("chat", "FR-ca").unwrap()),
        Term::Literal(
            Literal::typed("01", Iri::new("http://www.w3.org/2001/XMLSchema#integer").unwrap())
                .unwrap(),
        ),
        Term::Literal(Literal::typed("x y", Iri::new("https://example.org/dt").unwrap()).unwrap()),
        Term::Literal(
            Literal::typed("1.", Iri::new("http://www.w3.org/2001/XMLSchema#decimal").unwrap())
                .unwrap(),
        ),
    ];
    let mut state = GraphState::new();
    for o in &objects {
        state.insert(&Triple::new(s.clone(), p.clone(), o.clone()).unwrap()).unwrap();
    }
    let mut out = Vec::new();
    rdf::write(&state, &mut out, Format::NTriples, &ExportOptions::new()).unwrap();
    let lines: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            l.strip_prefix("<https://example.org/s> <https://example.org/p> ").unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        lines,
        [
            "\"01\"^^<http://www.w3.org/2001/XMLSchema#integer> .",
            "\"1.\"^^<http://www.w3.org/2001/XMLSchema#decimal> .",
            "\"chat\"@fr-ca .",
            "\"say \\\"hi\\\"\\n\\ttab\\\\back\\r é 🦀 \\u0001\\u007F\" .",
            "\"x y\"^^<https://example.org/dt> .",
        ]
    );
    // Turtle writes `01` bare (an xsd:integer keeps its lexical form) and `1.` in quotes
    // (bare, the dot would end the statement); both read back identical.
    for options in [ExportOptions::new(), awkward_prefixes()] {
        let mut out = Vec::new();
        rdf::write(&state, &mut out, Format::Turtle, &options).unwrap();
        let text = String::from_utf8(out).unwrap();
        let back = rdf::read(text.as_bytes(), Format::Turtle, ImportOptions::new()).unwrap();
        assert_eq!(back.into_triples(), state.triples(), "{text}");
    }
}

#[test]
fn export_order_is_independent_of_history() {
    let t = |n: u32| {
        Triple::new(
            Term::iri(format!("https://example.org/s{}", n % 7)).unwrap(),
            Term::iri("https://example.org/p").unwrap(),
            Term::string(format!("v{n}")).unwrap(),
        )
        .unwrap()
    };
    let mut forward = GraphState::new();
    let mut backward = GraphState::new();
    for n in 0..100 {
        forward.insert(&t(n)).unwrap();
        backward.insert(&t(99 - n)).unwrap();
    }
    for format in Format::ALL {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        rdf::write(&forward, &mut a, format, &ExportOptions::new()).unwrap();
        rdf::write(&backward, &mut b, format, &ExportOptions::new()).unwrap();
        assert_eq!(a, b, "{format}");
    }
}
