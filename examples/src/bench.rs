//! The benchmark JSON document and small measuring helpers.
//!
//! `{"bench": "<area>", "results": [{"case": "<name>", "params": {...}, "metrics": {...}}]}`

use serde_json::{Map, Value, json};

/// One benchmark case's result.
pub struct Case {
    /// Case name, e.g. `commit-memory`.
    pub name: String,
    /// Parameters the case ran with.
    pub params: Map<String, Value>,
    /// Measured metrics, units in the names.
    pub metrics: Map<String, Value>,
}

impl Case {
    /// A case with no parameters or metrics yet.
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), params: Map::new(), metrics: Map::new() }
    }

    /// Adds a parameter.
    pub fn param(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.params.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a metric.
    pub fn metric(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.metrics.insert(key.to_owned(), value.into());
        self
    }
}

/// Collects cases and prints them as JSON or as a table.
pub struct Report {
    bench: String,
    cases: Vec<Case>,
    json: bool,
}

impl Report {
    /// A report for `bench`; `json` selects the output format.
    pub fn new(bench: &str, json: bool) -> Self {
        Self { bench: bench.to_owned(), cases: Vec::new(), json }
    }

    /// Records a case and, in human mode, prints it at once.
    pub fn push(&mut self, case: Case) {
        if !self.json {
            let metrics: Vec<String> =
                case.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{:<18} {}", case.name, metrics.join("  "));
        }
        self.cases.push(case);
    }

    /// Prints the JSON document (JSON mode only).
    pub fn finish(self) {
        if self.json {
            let results: Vec<Value> = self
                .cases
                .into_iter()
                .map(|c| json!({"case": c.name, "params": c.params, "metrics": c.metrics}))
                .collect();
            println!("{}", json!({"bench": self.bench, "results": results}));
        }
    }
}

/// The `q` quantile (0..=1) of `samples`, which it sorts.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[idx.min(samples.len() - 1)]
}

/// Rounds to `digits` decimals, for readable JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Peak resident set size of this process, in bytes (Linux `VmHWM`), if available.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
