//! Secret bytes (hash keys, passwords) that never show up in `Debug`,
//! `Display`, logs or errors.

use std::fmt;

/// Bytes that must not be printed. `Debug` shows `Secret([redacted])`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Reads a secret file; one trailing newline (as editors and
    /// `kubectl create secret --from-file` leave) is not part of the secret.
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let mut bytes = std::fs::read(path)?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(Secret(bytes))
    }

    /// Reads a hash key file: as [`Secret::from_file`], and an empty key
    /// is an error. The message names the file, never the content.
    pub fn key_file(path: &std::path::Path) -> Result<Self, String> {
        let key = Self::from_file(path).map_err(|e| {
            format!(
                "cannot read the hash key file {}: {}",
                path.display(),
                e.kind()
            )
        })?;
        if key.is_empty() {
            return Err(format!("the hash key file {} is empty", path.display()));
        }
        Ok(key)
    }

    /// The secret's bytes, for the one place that uses them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: overwrite before the allocator reuses the memory;
        // black_box keeps the writes from being optimized away.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn file_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "abc\r\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), b"abc");
    }
}
