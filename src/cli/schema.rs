//! `schema`: print the JSON Schema of the rule language.

use super::Failure;
use std::process::ExitCode;

/// The schema, also published as `docs/rules.schema.json`.
pub(crate) const SCHEMA: &str = include_str!("../../docs/rules.schema.json");

pub(crate) fn run() -> Result<ExitCode, Failure> {
    print!("{SCHEMA}");
    Ok(ExitCode::SUCCESS)
}
