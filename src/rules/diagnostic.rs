//! Problems found in a rule or test file, told the way a person fixes them:
//! `file:line:column: error: rule <id>: what is wrong, and how to fix it`.

use std::fmt;

/// How bad a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Printed; the file is still used.
    Warning,
    /// The file is rejected.
    Error,
}

/// One problem, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The id of the rule the problem is in, when it is in one.
    pub rule: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {sev}: ", self.file, self.line, self.column)?;
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one or more files, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.severity == Severity::Warning)
    }

    /// Sorts by position so output reads top to bottom.
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Diagnostics {
    /// One error at the top of `file`.
    pub fn single(file: &str, message: String) -> Self {
        Diagnostics(vec![Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line: 1,
            column: 1,
            rule: None,
            message,
        }])
    }
}

/// Reads a file the user named: its name as shown, and its text, or the
/// reason it cannot be read (`what` says which kind of file it is).
pub fn read_source(path: &std::path::Path, what: &str) -> Result<(String, String), Diagnostics> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((shown, text)),
        Err(e) => Err(Diagnostics::single(
            &shown,
            format!("cannot read the {what}: {e}"),
        )),
    }
}
