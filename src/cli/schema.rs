//! `schema`: print the JSON Schema of the rule language, or with
//! `--tests` of rule test files.

use super::Failure;
use clap::Args;
use std::process::ExitCode;

/// The schema, also published as `docs/rules.schema.json`.
pub(crate) const SCHEMA: &str = include_str!("../../docs/rules.schema.json");
/// The test-file schema, also published as `docs/rule-tests.schema.json`.
pub(crate) const TESTS_SCHEMA: &str = include_str!("../../docs/rule-tests.schema.json");

#[derive(Args, Debug)]
pub(crate) struct SchemaArgs {
    /// The schema of rule test files instead of rule files.
    #[arg(long)]
    tests: bool,
}

pub(crate) fn run(args: SchemaArgs) -> Result<ExitCode, Failure> {
    print!("{}", if args.tests { TESTS_SCHEMA } else { SCHEMA });
    Ok(ExitCode::SUCCESS)
}
