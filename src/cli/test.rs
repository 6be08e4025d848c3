//! `test`: run the governance team's rule tests.

use super::Failure;
use crate::testing::{discover, TestFile};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct TestArgs {
    /// Test files, or folders to search for them.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

pub(crate) fn run(args: TestArgs) -> Result<ExitCode, Failure> {
    let files = discover(&args.paths)
        .map_err(|e| Failure::usage(format!("cannot read the test folder: {e}")))?;
    if files.is_empty() {
        return Err(Failure::usage(
            "no test files found (a test file is a .yaml file with `cases:`)",
        ));
    }
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in files {
        println!("{}", path.display());
        let report = TestFile::load(&path).and_then(|tf| tf.run());
        match report {
            Err(diags) => {
                print!("{diags}");
                println!("  cannot run this file");
                failed += 1;
            }
            Ok(report) => {
                for w in &report.warnings {
                    println!("  {w}");
                }
                for r in &report.results {
                    match &r.failure {
                        None => {
                            println!("  test {} ... passed", r.name);
                            passed += 1;
                        }
                        Some(why) => {
                            println!("  test {} ... failed", r.name);
                            println!(
                                "    {}:{}: {}",
                                report.file,
                                r.line,
                                why.trim_end().replace('\n', "\n    ")
                            );
                            failed += 1;
                        }
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
