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

/// The command line the benchmark binaries share: `--json`, `--case NAME`, `-h`/`--help`, and
/// numeric options with defaults (underscores allowed: `--n 1_000_000`).
pub struct Cli {
    /// `--json` was given.
    pub json: bool,
    /// The one case to run (`--case`), checked against the case names.
    pub only: Option<String>,
    values: Vec<(&'static str, f64)>,
}

impl Cli {
    /// Parses the process arguments of `bench` (e.g. `bench-sync`) whose cases are `cases`
    /// and whose numeric options are `options` (flag, default). A bad argument prints a
    /// message and exits with status 2; `--help` prints the usage and exits with 0.
    pub fn parse(bench: &str, cases: &[&str], options: &[(&'static str, f64)]) -> Self {
        match Self::parse_from(bench, cases, options, std::env::args().skip(1)) {
            Ok(cli) => cli,
            Err(CliExit::Help(usage)) => {
                println!("{usage}");
                std::process::exit(0)
            }
            Err(CliExit::Error(msg)) => {
                eprintln!("{bench}: {msg}");
                std::process::exit(2)
            }
        }
    }

    /// [`parse`](Self::parse) over given arguments, returning instead of exiting.
    ///
    /// ```
    /// use llmkg_examples::bench::{Cli, CliExit};
    ///
    /// let parse = |args: &[&str]| {
    ///     let options = [("--n", 10.0), ("--seconds", 1.5)];
    ///     Cli::parse_from("bench-x", &["a", "b"], &options, args.iter().map(|s| s.to_string()))
    /// };
    /// let cli = parse(&["--json", "--n", "1_000", "--case", "b"]).unwrap();
    /// assert!(cli.json && cli.runs("b") && !cli.runs("a"));
    /// assert_eq!((cli.get("--n"), cli.get("--seconds")), (1000.0, 1.5));
    /// assert!(parse(&[]).unwrap().runs("a"));
    /// assert_eq!(parse(&["--case", "c"]).err(), Some(CliExit::Error("unknown case c".into())));
    /// assert_eq!(parse(&["--n"]).err(), Some(CliExit::Error("--n needs a number".into())));
    /// assert_eq!(parse(&["--x"]).err(), Some(CliExit::Error("unknown argument --x".into())));
    /// assert_eq!(
    ///     parse(&["-h"]).err(),
    ///     Some(CliExit::Help("bench-x [--json] [--case a|b] [--n N (10)] [--seconds N (1.5)]".into()))
    /// );
    /// ```
    pub fn parse_from(
        bench: &str,
        cases: &[&str],
        options: &[(&'static str, f64)],
        args: impl IntoIterator<Item = String>,
    ) -> Result<Self, CliExit> {
        let mut cli = Self { json: false, only: None, values: options.to_vec() };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--json" => cli.json = true,
                "--case" => {
                    let name = it.next().ok_or(CliExit::Error("--case needs a name".into()))?;
                    if !cases.contains(&name.as_str()) {
                        return Err(CliExit::Error(format!("unknown case {name}")));
                    }
                    cli.only = Some(name);
                }
                "-h" | "--help" => {
                    let mut usage = format!("{bench} [--json] [--case {}]", cases.join("|"));
                    for (flag, default) in options {
                        usage.push_str(&format!(" [{flag} N ({default})]"));
                    }
                    return Err(CliExit::Help(usage));
                }
                flag => {
                    let Some(slot) = cli.values.iter_mut().find(|(f, _)| *f == flag) else {
                        return Err(CliExit::Error(format!("unknown argument {flag}")));
                    };
                    slot.1 = it
                        .next()
                        .and_then(|v| v.replace('_', "").parse().ok())
                        .ok_or_else(|| CliExit::Error(format!("{flag} needs a number")))?;
                }
            }
        }
        Ok(cli)
    }

    /// The value of a numeric option (its default if not given).
    pub fn get(&self, flag: &str) -> f64 {
        self.values.iter().find(|(f, _)| *f == flag).map_or(f64::NAN, |(_, v)| *v)
    }

    /// Whether `case` is to run (no `--case`, or `--case case`).
    pub fn runs(&self, case: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == case)
    }
}

/// Why [`Cli::parse_from`] did not return options.
#[derive(Debug, PartialEq, Eq)]
pub enum CliExit {
    /// `--help`: the usage line.
    Help(String),
    /// A bad argument, with the message.
    Error(String),
}
