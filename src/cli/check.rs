//! `check`: validate rule files.

use super::Failure;
use crate::engine::{KeySupply, Limits, Sanitizer};
use crate::rules::RuleFile;
use clap::Args;
use std::path::{Path, PathBuf};
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
    let failed = files.iter().filter(|p| !check_rule_file(p, None)).count();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks one rule file: prints its warnings and errors (`named_by`, the
/// option that names it, is added to the error lines); whether it is
/// usable.
pub(crate) fn check_rule_file(path: &Path, named_by: Option<&str>) -> bool {
    let by = named_by.map_or(String::new(), |o| format!(" (`{o}`)"));
    match RuleFile::load(path) {
        Ok((file, warnings)) => {
            print!("{warnings}");
            // Compile too (with a placeholder key): catches what only the
            // compiler knows, such as too many globs.
            match Sanitizer::compile(&file, KeySupply::Placeholder, Limits::default()) {
                Ok(_) => {
                    println!(
                        "{}: ok ({} rules, {} warnings)",
                        path.display(),
                        file.rules.len(),
                        warnings.warnings().count()
                    );
                    true
                }
                Err(e) => {
                    println!("{}:1:1: error: {e}{by}", path.display());
                    false
                }
            }
        }
        Err(diags) => {
            print!("{diags}");
            println!("{}: {} errors{by}", path.display(), diags.errors().count());
            false
        }
    }
}
