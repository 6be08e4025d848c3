//! `config check`: a service configuration validated offline, as `run`
//! would at startup, with the rule files it names; no broker is contacted.

use super::Failure;
use crate::config::Config;
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
    /// Validate a service configuration file (and the rule files it names)
    /// without connecting to Kafka: every problem is printed.
    ///
    /// Environment variables EVENT_SANITIZER__SECTION__KEY override the
    /// file, as for `run`. Exits 1 when there is a problem, 0 otherwise.
    Check(ConfigCheckArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ConfigCheckArgs {
    /// The configuration file (YAML).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub(crate) fn run(command: ConfigCommand) -> Result<ExitCode, Failure> {
    let ConfigCommand::Check(args) = command;
    let cfg = match Config::load(Some(&args.file)) {
        Ok(cfg) => cfg,
        Err(e) => {
            for p in &e.problems {
                println!("{}: error: {p}", args.file.display());
            }
            println!("{}: {} problems", args.file.display(), e.problems.len());
            return Ok(ExitCode::from(1));
        }
    };
    // The rule files it names, checked as `check` does (the hash key is
    // not needed: a placeholder compiles them).
    let mut rule_files: Vec<(&str, &Path)> = vec![("rules.file", &cfg.rules.file)];
    if let Some(f) = &cfg.rules.shadow_file {
        rule_files.push(("rules.shadow_file", f));
    }
    if let Some(w) = &cfg.webhooks {
        rule_files.push(("webhooks.rules", &w.rules));
    }
    let failed = rule_files
        .into_iter()
        .filter(|(option, path)| !super::check::check_rule_file(path, Some(option)))
        .count();
    if failed > 0 {
        return Ok(ExitCode::from(1));
    }
    println!(
        "{}: ok (delivery {}, inputs {}, clean {}, dead letters {})",
        args.file.display(),
        match cfg.kafka.delivery {
            crate::config::DeliveryMode::AtLeastOnce => "at_least_once",
            crate::config::DeliveryMode::ExactlyOnce => "exactly_once",
        },
        cfg.kafka.input_topics.join(", "),
        cfg.kafka.clean_topic,
        cfg.kafka.dead_letter_topic
    );
    Ok(ExitCode::SUCCESS)
}
