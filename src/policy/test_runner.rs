//! `portcullis policy test`: an `opa test` work-alike on regorus' interpreter.
//!
//! Every `.rego` file under the given paths (test files included) and every
//! `data.json` / `data.yaml` (merged at its directory's path) is loaded into one
//! interpreter [`Engine`] (the one that supports `with … as`). Rules whose name
//! starts with `test_` are tests, `todo_test_` rules are skipped. Each test is
//! evaluated as `data.<package>.<rule>` on a fresh clone of the prepared engine,
//! so nothing one test does can affect another: `true` passes, anything else
//! (`false`, undefined, another value) fails, an evaluation error (or the per-test
//! timeout) is an error with its `file:line`. A test defined twice runs as two
//! tests (`test_x`, `test_x#01`), so one passing definition cannot hide another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regorus::unstable::{Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::Serialize;

use super::bundle::{Bundle, BundleError};
use super::exact_json::json_to_value;
use super::options::{ExtensionHook, PolicyError};

/// How tests are selected and run.
#[derive(Clone, Default)]
pub struct TestOptions {
    /// Only tests whose full name (`data.pkg.test_x`) matches.
    pub run: Option<regex::Regex>,
    /// Per-test time budget (`None`: 5 s).
    pub timeout: Option<Duration>,
    /// Gather line coverage.
    pub coverage: bool,
    /// Registers extension builtins (e.g. `io.jwt.*`) on the engine.
    pub extensions: Option<ExtensionHook>,
}

/// Why tests could not be run at all (as opposed to a test failing).
#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    /// A file could not be read or a data file is invalid.
    #[error(transparent)]
    Load(#[from] BundleError),
    /// A module does not parse or the modules do not compile.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A path given on the command line is neither a directory nor a `.rego`/data file.
    #[error("{0}: not a directory, .rego or data file")]
    Path(PathBuf),
}

/// Where a test rule is defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The module's file.
    pub file: String,
    /// 1-based line.
    pub row: u32,
    /// 1-based column.
    pub col: u32,
}

/// An evaluation error of a test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestError {
    /// `eval_error` (a runtime error) or `eval_cancel_error` (the time limit), as OPA.
    pub code: &'static str,
    /// The message (with `file:line:col:` where regorus reports it).
    pub message: String,
}

/// The outcome of one test (also its JSON shape, like `opa test --format json`).
#[derive(Debug, Clone, Serialize)]
pub struct TestResult {
    /// Where the rule is defined.
    pub location: Location,
    /// `data.<package>`.
    pub package: String,
    /// The rule name.
    pub name: String,
    /// The test evaluated to false or undefined.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fail: bool,
    /// The test raised an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TestError>,
    /// A `todo_` rule, not run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip: bool,
    /// Output of `print` calls during the test.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output: Vec<String>,
    /// Evaluation time in nanoseconds.
    pub duration: u64,
}

impl TestResult {
    /// `PASS`, `FAIL`, `ERROR` or `SKIPPED`.
    pub fn verdict(&self) -> &'static str {
        if self.skip {
            "SKIPPED"
        } else if self.error.is_some() {
            "ERROR"
        } else if self.fail {
            "FAIL"
        } else {
            "PASS"
        }
    }

    /// The full rule path, `data.pkg.test_x`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.package, self.name)
    }
}

/// Line coverage of one (non-test) module.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileCoverage {
    /// Lines evaluated by at least one test.
    pub covered: BTreeSet<u32>,
    /// Lines never evaluated.
    pub not_covered: BTreeSet<u32>,
}

impl FileCoverage {
    /// Covered share in percent (100 when nothing is coverable).
    pub fn percent(&self) -> f64 {
        let total = self.covered.len() + self.not_covered.len();
        if total == 0 {
            100.0
        } else {
            self.covered.len() as f64 * 100.0 / total as f64
        }
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    /// Results in file, then definition order.
    pub results: Vec<TestResult>,
    /// Coverage per file, when requested.
    pub coverage: Option<BTreeMap<String, FileCoverage>>,
}

impl TestReport {
    /// Whether every test passed (or was skipped).
    pub fn passed(&self) -> bool {
        self.results
            .iter()
            .all(|r| r.skip || (!r.fail && r.error.is_none()))
    }

    fn count(&self, verdict: &str) -> usize {
        self.results
            .iter()
            .filter(|r| r.verdict() == verdict)
            .count()
    }

    /// Human-readable output like `opa test` (failures only unless `verbose`).
    pub fn to_text(&self, verbose: bool) -> String {
        let mut out = String::new();
        let mut by_file: BTreeMap<&str, Vec<&TestResult>> = BTreeMap::new();
        for r in &self.results {
            by_file.entry(r.location.file.as_str()).or_default().push(r);
        }
        for (file, results) in by_file {
            let shown: Vec<_> = results
                .into_iter()
                .filter(|r| verbose || matches!(r.verdict(), "FAIL" | "ERROR"))
                .collect();
            if shown.is_empty() {
                continue;
            }
            out.push_str(&format!("{file}:\n"));
            for r in shown {
                match r.verdict() {
                    "SKIPPED" => out.push_str(&format!("{}: SKIPPED\n", r.full_name())),
                    v => out.push_str(&format!(
                        "{}: {v} ({})\n",
                        r.full_name(),
                        fmt_duration(r.duration)
                    )),
                }
                if let Some(e) = &r.error {
                    out.push_str(&format!(
                        "  {}:{}: {}\n",
                        r.location.file, r.location.row, e.message
                    ));
                }
                if r.fail {
                    out.push_str(&format!(
                        "  {}:{}: test failed\n",
                        r.location.file, r.location.row
                    ));
                }
                for line in &r.output {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            out.push('\n');
        }
        if let Some(cov) = &self.coverage {
            out.push_str(&coverage_text(cov));
        }
        let total = self.results.len();
        out.push_str(&"-".repeat(80));
        out.push('\n');
        if total == 0 {
            out.push_str("no tests found\n");
        }
        for (label, verdict) in [
            ("PASS", "PASS"),
            ("FAIL", "FAIL"),
            ("SKIPPED", "SKIPPED"),
            ("ERROR", "ERROR"),
        ] {
            let n = self.count(verdict);
            if n > 0 {
                out.push_str(&format!("{label}: {n}/{total}\n"));
            }
        }
        out
    }

    /// JSON output: the results array (like `opa test --format json`), or
    /// with coverage `{"results": [...], "coverage": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let results = serde_json::to_value(&self.results).unwrap_or_default();
        match &self.coverage {
            None => results,
            Some(cov) => {
                let files: serde_json::Map<String, serde_json::Value> = cov
                    .iter()
                    .map(|(f, c)| {
                        (
                            f.clone(),
                            serde_json::json!({
                                "covered": c.covered,
                                "not_covered": c.not_covered,
                                "coverage": round1(c.percent()),
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "results": results,
                    "coverage": {"files": files, "coverage": round1(total_percent(cov))},
                })
            }
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn total_percent(cov: &BTreeMap<String, FileCoverage>) -> f64 {
    let covered: usize = cov.values().map(|c| c.covered.len()).sum();
    let total: usize = cov
        .values()
        .map(|c| c.covered.len() + c.not_covered.len())
        .sum();
    if total == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

fn coverage_text(cov: &BTreeMap<String, FileCoverage>) -> String {
    let mut out = String::from("COVERAGE:\n");
    for (file, c) in cov {
        let total = c.covered.len() + c.not_covered.len();
        out.push_str(&format!(
            "{file}: {:.1}% ({}/{total} lines)",
            c.percent(),
            c.covered.len()
        ));
        if !c.not_covered.is_empty() {
            let lines: Vec<String> = c.not_covered.iter().map(u32::to_string).collect();
            out.push_str(&format!(" not covered: {}", lines.join(",")));
        }
        out.push('\n');
    }
    out.push_str(&format!("total: {:.1}%\n", total_percent(cov)));
    out
}

fn fmt_duration(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d < Duration::from_millis(1) {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else {
        format!("{:.1}ms", ns as f64 / 1e6)
    }
}

/// Loads `.rego` and data files from `paths` (directories, or single files).
pub fn load_sources(paths: &[PathBuf]) -> Result<Bundle, TestRunError> {
    let mut all = Bundle::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| BundleError::Io {
            path: path.clone(),
            source,
        })?;
        let part = if meta.is_dir() {
            let mut b = Bundle::from_dir(path, true)?;
            // A directory's manifest says nothing about tests; keep roots out of it.
            b.manifest = Default::default();
            b
        } else {
            single_file(path)?
        };
        all.merge(part)?;
    }
    all.modules.sort();
    all.modules.dedup_by(|a, b| a.0 == b.0);
    Ok(all)
}

/// A single `.rego` file, or a `.json`/`.yaml` data file merged at the top of `data`.
pub fn single_file(path: &Path) -> Result<Bundle, TestRunError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut b = Bundle::default();
    if name.ends_with(".rego") {
        b.modules.push((name, text));
    } else if name.ends_with(".json") || name.ends_with(".yaml") || name.ends_with(".yml") {
        let value: serde_json::Value = if name.ends_with(".json") {
            serde_json::from_str(&text).map_err(|e| BundleError::Data {
                path: name.clone(),
                message: e.to_string(),
            })?
        } else {
            serde_yaml::from_str(&text).map_err(|e| BundleError::Data {
                path: name.clone(),
                message: e.to_string(),
            })?
        };
        if !value.is_object() && !value.is_null() {
            return Err(BundleError::Data {
                path: name,
                message: "a data file must contain an object".to_string(),
            }
            .into());
        }
        if value.is_object() {
            b.data = value;
        }
    } else {
        return Err(TestRunError::Path(path.to_path_buf()));
    }
    Ok(b)
}

/// Builds an interpreter engine holding `sources`, prepared for evaluation.
/// Parse errors name `file:line:col`.
pub fn engine_for(
    sources: &Bundle,
    extensions: Option<&ExtensionHook>,
) -> Result<Engine, PolicyError> {
    let mut engine = super::parity::new_engine();
    if let Some(hook) = extensions {
        hook(&mut engine).map_err(|e| PolicyError::Extension(format!("{e:#}")))?;
    }
    let modules =
        super::parity::rewrite_output_args(sources.modules.clone(), &super::builtins::arity);
    for (name, text) in &modules {
        engine
            .add_policy(name.clone(), text.clone())
            .map_err(|e| PolicyError::from_regorus(name, &e))?;
    }
    engine
        .add_data(json_to_value(&sources.data))
        .map_err(|e| PolicyError::Data {
            path: "<data>".to_string(),
            message: format!("{e}"),
        })?;
    super::parity::refuse(&mut engine)?;
    // Analyse and schedule once so every clone starts prepared; compile-time
    // errors (unknown functions, recursion, …) surface here.
    engine
        .eval_query("true".to_string(), false)
        .map_err(|e| PolicyError::from_regorus("<compile>", &e))?;
    Ok(engine)
}

struct TestCase {
    package: String,
    /// The rule name as written, `test_x` (`test_x#01` for a second definition).
    name: String,
    /// The rule path evaluated, `data.pkg.test_x` (renamed when defined twice).
    query: String,
    location: Location,
    todo: bool,
}

/// A test rule's name token in a module's text.
struct TestRule {
    package: String,
    name: String,
    location: Location,
    /// Byte range of the name in the module text.
    name_span: (usize, usize),
}

/// Test rules in definition order: `test_*` rules, and `todo_test_*` ones (skipped),
/// as `opa test` finds them. Only complete rules without arguments are tests.
fn test_rules(engine: &mut Engine) -> Vec<TestRule> {
    let mut tests = Vec::new();
    for module in engine.get_modules().iter() {
        let package = format!("data.{}", module.package.refr.span().text());
        for rule in module.policy.iter() {
            let Rule::Spec {
                head: RuleHead::Compr { refr, .. },
                span,
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            let name = refr.span().text();
            let is_ident = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !is_ident || !(name.starts_with(TEST_PREFIX) || name.starts_with(SKIP_PREFIX)) {
                continue;
            }
            tests.push(TestRule {
                package: package.clone(),
                name: name.to_string(),
                location: Location {
                    file: span.source.file().to_string(),
                    row: span.line,
                    col: span.col,
                },
                name_span: (refr.span().start as usize, refr.span().end as usize),
            });
        }
    }
    tests
}

const TEST_PREFIX: &str = "test_";
const SKIP_PREFIX: &str = "todo_test_";

/// The name a second (third, …) definition of a test is evaluated under: in Rego
/// several definitions of one rule are OR'ed, so one passing definition would hide a
/// failing one. Like `opa test`, each definition is its own test (`test_x#01`).
fn duplicate_name(name: &str, k: usize) -> String {
    format!("{name}__portcullis_definition_{k:02}")
}

/// A byte range of a module's text and the name written there instead.
type Rename = ((usize, usize), String);

/// Finds the tests; where a test is defined more than once, renames the later
/// definitions in the module texts and returns the rewritten sources to load instead.
fn discover(engine: &mut Engine, sources: &Bundle) -> (Vec<TestCase>, Option<Bundle>) {
    let rules = test_rules(engine);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut renames: BTreeMap<String, Vec<Rename>> = BTreeMap::new();
    let mut tests = Vec::new();
    for r in rules {
        let full = format!("{}.{}", r.package, r.name);
        let k = *seen
            .entry(full.clone())
            .and_modify(|k| *k += 1)
            .or_insert(0);
        let (name, query) = if k == 0 {
            (r.name.clone(), full)
        } else {
            let internal = duplicate_name(&r.name, k);
            renames
                .entry(r.location.file.clone())
                .or_default()
                .push((r.name_span, internal.clone()));
            (
                format!("{}#{k:02}", r.name),
                format!("{}.{internal}", r.package),
            )
        };
        tests.push(TestCase {
            package: r.package,
            todo: r.name.starts_with(SKIP_PREFIX),
            name,
            query,
            location: r.location,
        });
    }
    if renames.is_empty() {
        return (tests, None);
    }
    let mut rewritten = sources.clone();
    for (file, text) in rewritten.modules.iter_mut() {
        let Some(edits) = renames.get_mut(file.as_str()) else {
            continue;
        };
        // Back to front, so earlier offsets stay valid.
        edits.sort_by_key(|e| std::cmp::Reverse(e.0 .0));
        for ((start, end), name) in edits.iter() {
            if text.get(*start..*end).is_some() {
                text.replace_range(*start..*end, name);
            }
        }
    }
    (tests, Some(rewritten))
}

/// Runs every test found in `sources`.
pub fn run_tests(sources: &Bundle, options: &TestOptions) -> Result<TestReport, TestRunError> {
    let mut engine = engine_for(sources, options.extensions.as_ref())?;
    let (tests, rewritten) = discover(&mut engine, sources);
    if let Some(rewritten) = &rewritten {
        engine = engine_for(rewritten, options.extensions.as_ref())?;
    }
    engine.set_gather_prints(true);
    // As `opa test`, whose runner does not raise builtin errors: a failing call
    // is undefined and the test goes on.
    engine.set_strict_builtin_errors(false);
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit: options.timeout.unwrap_or(Duration::from_secs(5)),
        check_interval: std::num::NonZeroU32::MIN.saturating_add(63),
    });
    if options.coverage {
        engine.set_enable_coverage(true);
    }
    let mut results = Vec::new();
    let mut covered: BTreeMap<String, FileCoverage> = BTreeMap::new();
    for t in tests {
        let full = format!("{}.{}", t.package, t.name);
        if let Some(re) = &options.run {
            if !re.is_match(&full) {
                continue;
            }
        }
        let mut result = TestResult {
            location: t.location,
            package: t.package,
            name: t.name,
            fail: false,
            error: None,
            skip: t.todo,
            output: Vec::new(),
            duration: 0,
        };
        if t.todo {
            results.push(result);
            continue;
        }
        let mut e = engine.clone();
        let start = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| e.eval_rule(t.query)));
        result.duration = start.elapsed().as_nanos() as u64;
        match outcome {
            // Only `true` passes (as in `opa test`): false, undefined or any other
            // value fails.
            Ok(Ok(Value::Bool(true))) => {}
            Ok(Ok(_)) => result.fail = true,
            Ok(Err(err)) => {
                let message = one_line(&format!("{err}"));
                let code = if message == TIMED_OUT {
                    "eval_cancel_error"
                } else {
                    "eval_error"
                };
                result.error = Some(TestError { code, message })
            }
            Err(_) => {
                result.error = Some(TestError {
                    code: "eval_error",
                    message: "the interpreter panicked".to_string(),
                })
            }
        }
        result.output = e.take_prints().unwrap_or_default();
        if options.coverage {
            if let Ok(report) = e.get_coverage_report() {
                for f in report.files {
                    let entry = covered.entry(f.path).or_default();
                    entry.covered.extend(f.covered);
                    entry.not_covered.extend(f.not_covered);
                }
            }
        }
        results.push(result);
    }
    let coverage = options.coverage.then(|| {
        // Test modules are not measured; a line covered by any test is covered.
        let mut files: BTreeMap<String, FileCoverage> = BTreeMap::new();
        for (name, _) in &sources.modules {
            if name.ends_with("_test.rego") {
                continue;
            }
            let mut c = covered.remove(name).unwrap_or_default();
            let hit = c.covered.clone();
            c.not_covered.retain(|l| !hit.contains(l));
            files.insert(name.clone(), c);
        }
        files
    });
    Ok(TestReport { results, coverage })
}

/// `file:line:col: message` from regorus' multi-line error text.
const TIMED_OUT: &str = "test timed out";

fn one_line(text: &str) -> String {
    if text.contains("exceeded time limit") {
        return TIMED_OUT.to_string();
    }
    super::rego_error::one_line(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(files: &[(&str, &str)]) -> Bundle {
        Bundle {
            modules: files
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect(),
            ..Bundle::default()
        }
    }

    #[test]
    fn verdicts() {
        let b = bundle(&[
            (
                "p.rego",
                "package p\nimport rego.v1\nallow if input.x == 1\n",
            ),
            (
                "p_test.rego",
                "package p_test\nimport rego.v1\nimport data.p\n\
                 test_pass if p.allow with input as {\"x\": 1}\n\
                 test_fail if p.allow with input as {\"x\": 2}\n\
                 test_error if v == 1\n\
                 todo_test_later if false\n\
                 todo_list := [1]\n\
                 helper(x) := x\n\
                 v = 1 if true\n\
                 v = 2 if true\n",
            ),
        ]);
        let report = run_tests(&b, &TestOptions::default()).unwrap();
        let verdicts: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.verdict()))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("test_pass", "PASS"),
                ("test_fail", "FAIL"),
                ("test_error", "ERROR"),
                ("todo_test_later", "SKIPPED")
            ]
        );
        assert!(!report.passed());
        let err = report.results[2].error.as_ref().unwrap();
        // A conflict is an error (a builtin error would only make the call
        // undefined, as in `opa test`).
        assert!(
            err.message.starts_with("p_test.rego:11:1: rule conflicts"),
            "{}",
            err.message
        );
        let text = report.to_text(false);
        assert!(
            text.contains("PASS: 1/4\nFAIL: 1/4\nSKIPPED: 1/4\nERROR: 1/4\n"),
            "{text}"
        );
    }

    #[test]
    fn only_true_passes_and_each_definition_is_a_test() {
        let b = bundle(&[(
            "t_test.rego",
            "package t\nimport rego.v1\n\
             test_dup if false\n\
             test_dup if true\n\
             test_dup if 1 == 1\n\
             test_value := \"oops\"\n",
        )]);
        let report = run_tests(&b, &TestOptions::default()).unwrap();
        let verdicts: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.verdict(), r.location.row))
            .collect();
        assert_eq!(
            verdicts,
            vec![
                ("test_dup", "FAIL", 3),
                ("test_dup#01", "PASS", 4),
                ("test_dup#02", "PASS", 5),
                ("test_value", "FAIL", 6),
            ]
        );
        // --run matches the reported names.
        let options = TestOptions {
            run: Some(regex::Regex::new("test_dup#01$").unwrap()),
            ..TestOptions::default()
        };
        let report = run_tests(&b, &options).unwrap();
        assert_eq!(report.results.len(), 1);
        assert!(report.passed());
    }

    #[test]
    fn coverage_is_gathered() {
        let b = bundle(&[
            (
                "p.rego",
                "package p\nimport rego.v1\nallow if input.x == 1\n\nother if input.y == 2\n",
            ),
            (
                "p_test.rego",
                "package p_test\nimport rego.v1\ntest_a if data.p.allow with input as {\"x\": 1}\n",
            ),
        ]);
        let options = TestOptions {
            coverage: true,
            ..TestOptions::default()
        };
        let report = run_tests(&b, &options).unwrap();
        assert!(report.passed());
        let cov = report.coverage.unwrap();
        let p = &cov["p.rego"];
        assert!(p.covered.contains(&3), "{p:?}");
        assert!(p.not_covered.contains(&5), "{p:?}");
        assert!(!cov.contains_key("p_test.rego"));
    }
}
