//! `check`: validate rule files.

use super::Failure;
use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::rules::RuleFile;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// Rule files to check, or folders: every .yaml file in them that is
    /// not a rule test file (`cases:`).
    #[arg(required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
}

pub(crate) fn run(args: CheckArgs) -> Result<ExitCode, Failure> {
    let files = crate::testing::discover_rule_files(&args.files)
        .map_err(|e| Failure::usage(format!("cannot read the rules folder: {e}")))?;
    if files.is_empty() {
        return Err(Failure::usage(
            "no rule files found (.yaml files without `cases:`)",
        ));
    }
    let mut failed = 0;
    for path in &files {
        match RuleFile::load(path) {
            Ok((file, warnings)) => {
                print!("{warnings}");
                // Compile too (with a placeholder key): catches what only the
                // compiler knows, such as too many globs.
                match Sanitizer::compile(&file, KeySupply::Placeholder, Limits::default()) {
                    Ok(_) => println!(
                        "{}: ok ({} rules, {} warnings)",
                        path.display(),
                        file.rules.len(),
                        warnings.warnings().count()
                    ),
                    Err(e) => {
                        println!("{}:1:1: error: {e}", path.display());
                        failed += 1;
                    }
                }
            }
            Err(diags) => {
                print!("{diags}");
                println!("{}: {} errors", path.display(), diags.errors().count());
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
