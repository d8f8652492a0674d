//! A seeded generator of realistic knowledge-graph triples.
//!
//! The shape imitates published linked data: a few hundred predicates drawn from a skewed
//! distribution (a handful such as `rdf:type` and `rdfs:label` are very common), entities
//! described by about eight triples each, one `rdf:type` per entity from fifty classes,
//! labels with language tags, typed literals (integers, dates) and links to other entities.
//! Consecutive triples describe the same entity, as in real dumps.

use llmkg_federation_core::{Iri, Literal, Term, Triple};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RDF_TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
const RDFS_LABEL: &str = "http://www.w3.org/2000/01/rdf-schema#label";
const XSD_INTEGER: &str = "http://www.w3.org/2001/XMLSchema#integer";
const XSD_DATE: &str = "http://www.w3.org/2001/XMLSchema#date";
const LANGS: [&str; 4] = ["en", "de", "fr", "es"];

/// Number of distinct predicates the generator uses.
pub const PREDICATES: usize = 300;

/// An endless, deterministic stream of triples.
pub struct Generator {
    rng: ChaCha8Rng,
    base: String,
    predicates: Vec<Term>,
    classes: Vec<Term>,
    rdf_type: Term,
    label: Term,
    integer: Iri,
    date: Iri,
    entity: u64,
    pending: Vec<Triple>,
}

impl Generator {
    /// A generator whose entity IRIs live under `base` (e.g. `https://data.example.org/acme/`).
    #[allow(clippy::expect_used)] // constant, valid IRIs
    pub fn new(seed: u64, base: &str) -> Self {
        let iri = |s: String| Term::iri(s).expect("generated IRIs are valid");
        let namespaces = [
            "http://schema.org/",
            "http://purl.org/dc/terms/",
            "http://xmlns.com/foaf/0.1/",
            "http://www.w3.org/2004/02/skos/core#",
            "https://w3id.org/example/vocab#",
        ];
        let predicates = (0..PREDICATES)
            .map(|i| iri(format!("{}property{i}", namespaces[i % namespaces.len()])))
            .collect();
        let classes = (0..50).map(|i| iri(format!("http://schema.org/Class{i}"))).collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            base: base.to_owned(),
            predicates,
            classes,
            rdf_type: iri(RDF_TYPE.into()),
            label: iri(RDFS_LABEL.into()),
            integer: Iri::new(XSD_INTEGER).expect("valid"),
            date: Iri::new(XSD_DATE).expect("valid"),
            entity: 0,
            pending: Vec::new(),
        }
    }

    fn entity_iri(&self, n: u64) -> Term {
        Term::Iri(
            Iri::new(format!("{}entity/{n}", self.base)).unwrap_or_else(|_| unreachable_iri()),
        )
    }

    /// A skewed predicate choice: low indexes are much more frequent.
    fn predicate(&mut self) -> Term {
        let x: f64 = self.rng.random();
        let i = ((x * x * x) * PREDICATES as f64) as usize;
        self.predicates[i.min(PREDICATES - 1)].clone()
    }

    #[allow(clippy::expect_used)] // every generated term is valid
    fn describe_next_entity(&mut self) {
        let n = self.entity;
        self.entity += 1;
        let s = self.entity_iri(n);
        let class = self.classes[self.rng.random_range(0..self.classes.len())].clone();
        let mut out = vec![
            Triple::new(s.clone(), self.rdf_type.clone(), class).expect("valid"),
            Triple::new(
                s.clone(),
                self.label.clone(),
                Literal::language(format!("Entity {n}"), LANGS[(n % 4) as usize]).expect("valid"),
            )
            .expect("valid"),
        ];
        let extra = self.rng.random_range(4..9);
        for _ in 0..extra {
            let p = self.predicate();
            let o: Term = match self.rng.random_range(0..10) {
                0..=3 if n > 0 => {
                    let target = self.rng.random_range(0..n);
                    self.entity_iri(target)
                }
                0..=5 => {
                    Literal::string(format!("value {} of {n}", self.rng.random_range(0..1_000_000)))
                        .expect("valid")
                        .into()
                }
                6..=7 => Literal::typed(
                    self.rng.random_range(0..100_000).to_string(),
                    self.integer.clone(),
                )
                .expect("valid")
                .into(),
                _ => Literal::typed(
                    format!(
                        "20{:02}-{:02}-{:02}",
                        self.rng.random_range(0..26),
                        self.rng.random_range(1..13),
                        self.rng.random_range(1..29)
                    ),
                    self.date.clone(),
                )
                .expect("valid")
                .into(),
            };
            out.push(Triple::new(s.clone(), p, o).expect("valid"));
        }
        out.reverse();
        self.pending = out;
    }

    /// The next `n` triples (duplicates are possible but rare).
    pub fn take(&mut self, n: usize) -> Vec<Triple> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.pending.pop() {
                Some(t) => out.push(t),
                None => self.describe_next_entity(),
            }
        }
        out
    }
}

#[cold]
#[allow(clippy::panic)]
fn unreachable_iri() -> Iri {
    panic!("the generator's base must be an absolute IRI")
}
