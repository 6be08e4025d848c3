//! The commands of the `event-sanitizer` binary, one file each.
//!
//! Exit codes are stable: 0 success; 1 rule errors, failing rule tests or
//! an input that could not be fully processed; 2 usage or configuration
//! errors (a missing file, a bad flag, a hash key that cannot be read).

mod audit;
mod check;
mod config_check;
mod demo;
mod diff;
mod explain;
mod incident;
mod inventory;
mod replay;
mod run;
mod sanitize;
mod schema;
mod test;

use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::rules::RuleFile;
use crate::secret::Secret;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// `--version`: the release, the commit it was built from, and the rule
/// language version it reads.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EVENT_SANITIZER_COMMIT"),
    ", rule language version ",
    "1)"
);

/// event-sanitizer: keeps personal data out of the events sent to Customer.io.
///
/// Rules are YAML files written by the data governance team (see
/// docs/rules.md). These commands check them, test them, explain what they
/// do to an event, and apply them to files of events.
#[derive(Parser, Debug)]
#[command(name = "event-sanitizer", version = VERSION, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check rule files: print every error and warning with file:line:column.
    ///
    /// Exits 1 when any file has an error, 0 otherwise (warnings are printed
    /// but do not fail). Does not need the hash key.
    Check(check::CheckArgs),
    /// Run rule tests: every case of every test file, with a diff for each failure.
    ///
    /// PATHS are test files or folders; in a folder every .yaml file with
    /// `cases:` is a test file. Exits 1 when any case fails.
    Test(test::TestArgs),
    /// Show what the rules do to one event: the output and every decision.
    Explain(explain::ExplainArgs),
    /// Sanitize a file of events (JSON Lines), e.g. to anonymize a historical export.
    Sanitize(sanitize::SanitizeArgs),
    /// Service configuration: `config check FILE` validates it offline.
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    /// Print a shell completion script: `event-sanitizer completions bash >
    /// /etc/bash_completion.d/event-sanitizer` (or zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the JSON Schema of the rule language (for editors, via
    /// yaml-language-server); `--tests`: of rule test files.
    Schema(schema::SchemaArgs),
    /// Run the service: consume raw events, sanitize, produce clean events and dead letters.
    Run(run::RunArgs),
    /// Run the service against an in-process mock Kafka cluster with the sample events.
    Demo(demo::DemoArgs),
    /// Open dead letters and send them through again (once what refused
    /// them is fixed): back to their source topic, or judged with the
    /// current rules to the clean topic.
    ///
    /// Reads the dead-letter topic to the end it sees at the start. Exits 1
    /// when some are still refused or do not open (they stay on the topic).
    Replay(replay::ReplayArgs),
    /// Read the clean topic again and report what should not be there:
    /// every value detector, never-send key names, unhashed contact keys,
    /// canaries that leaked (never a value).
    ///
    /// As a service in its own consumer group (metrics on `http.listen`),
    /// or with --once over the whole topic (exits 1 when anything is found).
    Audit(audit::AuditArgs),
    /// Turn a leak on the clean topic into a report for the DPO and its
    /// repair: who (by digest), how many, when, which rules; the
    /// Customer.io calls that remove the attribute (or deletion requests
    /// with --delete), produced only with --apply; --suggest-rule prints
    /// the rule that closes it.
    Incident(incident::IncidentArgs),
    /// List the field paths that arrive in a file of events, with counts,
    /// the rule and action on each, the detectors that fire on their
    /// values, and the paths no rule classifies with a suggested rule.
    Inventory(inventory::InventoryArgs),
    /// Show what a candidate rule file would change on a file of events,
    /// field by field (values only as the rules in use produce them).
    Diff(diff::DiffArgs),
}

/// Where the hash key comes from, for commands that hash.
#[derive(Args, Debug, Clone)]
pub(crate) struct KeyArgs {
    /// Read the HMAC key from this file instead of the source the rule file names.
    #[arg(long, value_name = "FILE")]
    hash_key_file: Option<PathBuf>,
    /// Use a fixed, public placeholder key: digests are deterministic but are
    /// not the production ones. For trying rules without the secret.
    #[arg(long, conflicts_with = "hash_key_file")]
    placeholder_key: bool,
}

/// Rules and limits, for commands that sanitize.
#[derive(Args, Debug, Clone)]
pub(crate) struct RulesArgs {
    /// The rule file.
    #[arg(long, short = 'r', value_name = "FILE")]
    rules: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
    /// Largest message accepted, in bytes; larger ones are dead letters.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_bytes)]
    max_bytes: usize,
    /// Deepest nesting accepted; deeper messages are dead letters.
    #[arg(long, value_name = "LEVELS", default_value_t = Limits::default().max_depth)]
    max_depth: usize,
}

/// A rule file compiled with the placeholder key, for commands that show
/// no digest (`inventory`, `diff`): rule errors exit 1.
pub(crate) fn placeholder_rules(path: &std::path::Path) -> Result<Sanitizer, Failure> {
    let (file, _) = RuleFile::load(path).map_err(|d| Failure {
        message: d.to_string(),
        code: 1,
    })?;
    Sanitizer::compile(&file, KeySupply::Placeholder, Limits::default())
        .map_err(|e| Failure::usage(e.to_string()))
}

/// JSON Lines input: a file, or standard input for `-`.
pub(crate) fn input(path: &std::path::Path) -> Result<Box<dyn std::io::BufRead>, Failure> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f = std::fs::File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
    Ok(Box::new(std::io::BufReader::new(f)))
}

/// An error for a person: printed once, with the exit code to use.
pub(crate) struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
}

impl RulesArgs {
    /// Loads and compiles the rule file, printing warnings to stderr.
    pub(crate) fn sanitizer(&self) -> Result<Sanitizer, Failure> {
        let (file, warnings) = RuleFile::load(&self.rules).map_err(|d| Failure {
            message: d.to_string().trim_end().to_string(),
            code: 1,
        })?;
        for w in warnings.warnings() {
            eprintln!("{w}");
        }
        let owned;
        let supply = if self.key.placeholder_key {
            KeySupply::Placeholder
        } else if let Some(path) = &self.key.hash_key_file {
            owned = Secret::key_file(path).map_err(Failure::usage)?;
            KeySupply::Fixed(&owned)
        } else {
            KeySupply::FromSource
        };
        let limits = Limits {
            max_bytes: self.max_bytes,
            max_depth: self.max_depth,
        };
        Sanitizer::compile(&file, supply, limits).map_err(|e| {
            Failure::usage(format!("{e}\nhint: set the key where the rule file says, pass --hash-key-file FILE, or --placeholder-key for a dry run"))
        })
    }
}

/// Runs the binary: parses arguments, dispatches, prints errors once.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Test(a) => test::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Sanitize(a) => sanitize::run(a),
        Command::Config(c) => config_check::run(c),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "event-sanitizer",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema(a) => schema::run(a),
        Command::Run(a) => run::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Incident(a) => incident::run(a),
        Command::Inventory(a) => inventory::run(a),
        Command::Diff(a) => diff::run(a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
