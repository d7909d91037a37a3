//! `portcullis policy test|eval|check`: the policy author's tools.
//!
//! - `test [PATH...]`: run `test_*` rules like `opa test` (see [`super::test_runner`]);
//!   exit 0 when every test passes or is skipped, 2 on any failure or error (as
//!   `opa test`), 1 when the policies do not load.
//! - `eval [--input FILE|-] [--data PATH]... [--bundle PATH] [--strict-builtin-errors]
//!   QUERY`: evaluate a query and print `{"result": [...]}` as JSON (like `opa
//!   eval`, builtin errors non-strict unless asked); without
//!   `--data`/`--bundle` it loads `./policies` when that directory exists.
//! - `explain --input FILE [--data PATH]... [QUERY]`: why the query decided as it
//!   did (see [`super::explain`]).
//! - `replay --log FILE (--policies DIR | --bundle FILE)`: what a candidate policy
//!   would change in logged decisions (see [`super::replay`]).
//! - `check [PATH...]`: parse every module, compile the serving set for the
//!   configured queries and report problems as `file:line:col: message`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};

use super::bundle::{Bundle, BundleLimits};
use super::engine::{ExtensionHook, PolicyError, PolicyOptions, PolicySet};
use super::exact_json::json_to_value;
use super::explain::Explainer;
use super::replay;
use super::test_runner::{self, load_sources, TestOptions};

/// Output format of `policy test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Human-readable, like `opa test`.
    #[default]
    Pretty,
    /// JSON (an array of test results; with `--coverage` an object).
    Json,
}

/// Output format of `policy explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ExplainFormat {
    /// One line per rule definition tried, for people.
    #[default]
    Text,
    /// One JSON object, for tools.
    Json,
}

/// The `portcullis policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run Rego unit tests (`test_*` rules; `todo_test_*` rules are skipped).
    ///
    /// Exit status: 0 all passed (skipped tests do not fail the run), 2 a test
    /// failed or errored, 1 the policies could not be loaded.
    Test {
        /// Directories or files with policies, tests and data (default: policies).
        paths: Vec<PathBuf>,
        /// Show every test, not only failures, and their print output.
        #[arg(short, long)]
        verbose: bool,
        /// Only run tests whose full name (data.pkg.test_x) matches this regular expression.
        #[arg(long, value_name = "REGEX")]
        run: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
        /// Report line coverage of the non-test modules.
        #[arg(long)]
        coverage: bool,
        /// Per-test time limit, e.g. 5s, 500ms.
        #[arg(long, default_value = "5s")]
        timeout: String,
        /// Accepted for `opa test` compatibility: skipped tests never make the exit
        /// status non-zero here.
        #[arg(short = 'z', long)]
        exit_zero_on_skipped: bool,
    },
    /// Evaluate a query and print the result as JSON.
    Eval {
        /// Input document (JSON or YAML); `-` reads standard input.
        #[arg(long, short)]
        input: Option<PathBuf>,
        /// A .rego file, a data file (.json/.yaml, merged at the top of data) or a
        /// directory (modules and data.json/data.yaml at their path). Repeatable.
        /// Without --data and --bundle: ./policies if it exists.
        #[arg(long, short)]
        data: Vec<PathBuf>,
        /// An OPA bundle: a directory or a .tar.gz file (manifest roots checked).
        #[arg(long, short)]
        bundle: Vec<PathBuf>,
        /// Exit 1 when the result is undefined.
        #[arg(long)]
        fail: bool,
        /// Treat builtin errors as evaluation errors (as `opa eval
        /// --strict-builtin-errors`); by default a builtin error makes the call
        /// undefined, as in OPA-Envoy and the sidecar.
        #[arg(long)]
        strict_builtin_errors: bool,
        /// The query, e.g. data.envoy.authz.allow.
        query: String,
    },
    /// Explain a decision: each rule definition tried and the first expression
    /// that did not hold, with file:line and the values it compared.
    Explain {
        /// Input document (JSON or YAML); `-` reads standard input.
        #[arg(long, short)]
        input: PathBuf,
        /// Policies and data, as for `eval` (default: ./policies).
        #[arg(long, short)]
        data: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
        /// The query (default: the inbound query, data.envoy.authz.allow).
        query: Option<String>,
    },
    /// Re-decide the requests of a decision log (written with `log.input`) with a
    /// candidate policy and print what would change.
    ///
    /// Exit status: 0 nothing changes, 1 some decision would change, 2 the log or
    /// the policies could not be read.
    Replay {
        /// The decision log (JSON lines); `-` reads standard input.
        #[arg(long)]
        log: PathBuf,
        /// The candidate policy directory.
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        policies: Option<PathBuf>,
        /// The candidate as an OPA bundle (.tar.gz file or directory).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
        format: ExplainFormat,
        /// Query for inbound entries.
        #[arg(long, default_value = "data.envoy.authz.allow")]
        inbound_query: String,
        /// Query for outbound entries.
        #[arg(long, default_value = "data.portcullis.outbound.allow")]
        outbound_query: String,
    },
    /// Parse and compile policies; report errors as file:line:col.
    Check {
        /// Directories or files with policies and data (default: policies).
        paths: Vec<PathBuf>,
        /// Queries to compile (default: the inbound and outbound defaults).
        #[arg(long)]
        query: Vec<String>,
    },
}

/// Runs a `policy` subcommand without extension builtins.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    run_with(cmd, None)
}

/// Runs a `policy` subcommand; `extensions` registers extension builtins
/// (e.g. `io.jwt.*`) on every engine, as the sidecar does.
pub fn run_with(cmd: PolicyCommand, extensions: Option<ExtensionHook>) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Test {
            paths,
            verbose,
            run,
            format,
            coverage,
            timeout,
            exit_zero_on_skipped,
        } => {
            let run = run
                .map(|r| regex::Regex::new(&r))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--run: {e}"))?;
            let timeout = humantime::parse_duration(&timeout)
                .map_err(|e| anyhow::anyhow!("--timeout {timeout:?}: {e}"))?;
            let options = TestOptions {
                run,
                timeout: Some(timeout),
                coverage,
                extensions,
            };
            test(
                &default_paths(paths),
                verbose,
                format,
                exit_zero_on_skipped,
                &options,
            )
        }
        PolicyCommand::Eval {
            input,
            data,
            bundle,
            fail,
            strict_builtin_errors,
            query,
        } => {
            let extensions = match extensions {
                Some(_) if strict_builtin_errors => Some(super::builtins::strict_extensions()),
                other => other,
            };
            let options = EvalOptions {
                fail,
                strict_builtin_errors,
            };
            eval(
                input.as_deref(),
                &data,
                &bundle,
                options,
                &query,
                extensions,
            )
        }
        PolicyCommand::Explain {
            input,
            data,
            format,
            query,
        } => explain(&input, &data, format, query, extensions),
        PolicyCommand::Replay {
            log,
            policies,
            bundle,
            format,
            inbound_query,
            outbound_query,
        } => {
            let queries = [inbound_query, outbound_query];
            let options = PolicyOptions {
                extensions,
                ..PolicyOptions::default()
            };
            let candidate = match (policies, bundle) {
                (Some(dir), _) => PolicySet::load_dir(&dir, &queries, options)
                    .map_err(|e| anyhow::anyhow!("--policies {}: {e}", dir.display()))?,
                (None, Some(b)) => {
                    let bundle = read_bundle(&b)?;
                    PolicySet::from_sources(bundle.modules, bundle.data, &queries, options)
                        .map_err(|e| anyhow::anyhow!("--bundle {}: {e}", b.display()))?
                }
                (None, None) => anyhow::bail!("give --policies or --bundle"),
            };
            let report = if log == Path::new("-") {
                replay::replay(std::io::stdin().lock(), &candidate)
            } else {
                let file = std::fs::File::open(&log)
                    .map_err(|e| anyhow::anyhow!("--log {}: {e}", log.display()))?;
                replay::replay(std::io::BufReader::new(file), &candidate)
            }
            .map_err(|e| anyhow::anyhow!("--log {}: {e}", log.display()))?;
            match format {
                ExplainFormat::Text => print!("{}", report.to_text()),
                ExplainFormat::Json => {
                    println!("{}", serde_json::to_string_pretty(&report.to_json())?)
                }
            }
            Ok(if report.changed() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCommand::Check { paths, query } => check(&default_paths(paths), query, extensions),
    }
}

fn default_paths(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    if paths.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        paths
    }
}

fn test(
    paths: &[PathBuf],
    verbose: bool,
    format: Format,
    exit_zero_on_skipped: bool,
    options: &TestOptions,
) -> anyhow::Result<ExitCode> {
    let sources = load_sources(paths);
    let report = match sources.and_then(|s| test_runner::run_tests(&s, options)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match format {
        Format::Pretty => print!("{}", report.to_text(verbose)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report.to_json())?),
    }
    // `opa test` also fails on skipped tests unless given `-z`; here skips never do
    // (a `todo_test_` rule is work planned, not work broken), so `-z` changes nothing.
    let _ = exit_zero_on_skipped;
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn read_input(path: &Path) -> anyhow::Result<regorus::Value> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| anyhow::anyhow!("reading the input from standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--input {}: {e}", path.display()))?
    };
    // JSON is YAML, but JSON errors read better for JSON input.
    match serde_json::from_str(&text) {
        Ok(v) => Ok(super::exact_json::to_value(text.as_bytes(), &v)),
        Err(json_err) => serde_yaml::from_str(&text)
            .map(|v| json_to_value(&v))
            .map_err(|_| anyhow::anyhow!("--input {}: {json_err}", path.display())),
    }
}

/// How `policy eval` evaluates and exits.
#[derive(Debug, Clone, Copy)]
struct EvalOptions {
    fail: bool,
    strict_builtin_errors: bool,
}

/// An OPA bundle from a directory or a .tar.gz file.
fn read_bundle(b: &Path) -> anyhow::Result<Bundle> {
    if b.is_dir() {
        return Ok(Bundle::from_dir(b, false)?);
    }
    let bytes = std::fs::read(b).map_err(|e| anyhow::anyhow!("--bundle {}: {e}", b.display()))?;
    Bundle::from_tar_gz(&bytes, &BundleLimits::default())
        .map_err(|e| anyhow::anyhow!("--bundle {}: {e}", b.display()))
}

fn eval(
    input: Option<&Path>,
    data: &[PathBuf],
    bundles: &[PathBuf],
    options: EvalOptions,
    query: &str,
    extensions: Option<ExtensionHook>,
) -> anyhow::Result<ExitCode> {
    // Without -d/--bundle, the conventional policy directory (if there is one).
    let default_dir = [PathBuf::from("policies")];
    let data = if data.is_empty() && bundles.is_empty() && default_dir[0].is_dir() {
        &default_dir[..]
    } else {
        data
    };
    let mut sources = load_sources(data)?;
    for b in bundles {
        sources.merge(read_bundle(b)?)?;
    }
    let mut engine = test_runner::engine_for(&sources, extensions.as_ref())?;
    engine.set_strict_builtin_errors(options.strict_builtin_errors);
    if let Some(path) = input {
        engine.set_input(read_input(path)?);
    }
    engine.set_gather_prints(true);
    let results = engine
        .eval_query(query.to_string(), false)
        .map_err(|e| anyhow::anyhow!("{}", PolicyError::from_regorus("<query>", &e)))?;
    for line in engine.take_prints().unwrap_or_default() {
        eprintln!("{line}");
    }
    let undefined = results.result.is_empty();
    let out = if undefined {
        serde_json::json!({})
    } else {
        serde_json::json!({ "result": results.result })
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if options.fail && undefined {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn explain(
    input: &Path,
    data: &[PathBuf],
    format: ExplainFormat,
    query: Option<String>,
    extensions: Option<ExtensionHook>,
) -> anyhow::Result<ExitCode> {
    let data = if data.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        data.to_vec()
    };
    let sources = load_sources(&data)?;
    let serving = Bundle {
        modules: sources
            .modules
            .iter()
            .filter(|(n, _)| !n.ends_with("_test.rego"))
            .cloned()
            .collect(),
        ..sources
    };
    let engine = test_runner::engine_for(&serving, extensions.as_ref())?;
    let query = query.unwrap_or_else(|| crate::config::PolicyConfig::default().inbound_query);
    let mut explainer = Explainer::new(engine);
    let explanation = explainer.explain(&query, read_input(input)?)?;
    match format {
        ExplainFormat::Text => print!("{}", explanation.to_text()),
        ExplainFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&explanation.to_json())?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(
    paths: &[PathBuf],
    queries: Vec<String>,
    extensions: Option<ExtensionHook>,
) -> anyhow::Result<ExitCode> {
    let sources = match load_sources(paths) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Every module on its own, so all parse errors are reported, not only the first.
    let mut errors = Vec::new();
    for (name, text) in &sources.modules {
        let mut engine = super::parity::new_engine();
        if let Err(e) = engine.add_policy(name.clone(), text.clone()) {
            errors.push(PolicyError::from_regorus(name, &e).to_string());
        }
    }
    if errors.is_empty() {
        // The whole set (tests included) must analyse; then the serving set must
        // compile for the queries, as `portcullis run` would.
        if let Err(e) = test_runner::engine_for(&sources, extensions.as_ref()) {
            errors.push(e.to_string());
        } else {
            let queries = if queries.is_empty() {
                let d = crate::config::PolicyConfig::default();
                vec![d.inbound_query, d.outbound_query]
            } else {
                queries
            };
            let serving: Vec<_> = sources
                .modules
                .iter()
                .filter(|(n, _)| !n.ends_with("_test.rego"))
                .cloned()
                .collect();
            let options = PolicyOptions {
                extensions,
                limits: super::engine::EvalLimits {
                    timeout: Duration::from_secs(1),
                    ..Default::default()
                },
                ..PolicyOptions::default()
            };
            if let Err(e) =
                PolicySet::from_sources(serving, sources.data.clone(), &queries, options)
            {
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        println!("{} module(s) OK", sources.modules.len());
        Ok(ExitCode::SUCCESS)
    } else {
        for e in &errors {
            eprintln!("{e}");
        }
        eprintln!("{} error(s)", errors.len());
        Ok(ExitCode::FAILURE)
    }
}
