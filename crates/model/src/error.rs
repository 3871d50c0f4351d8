//! Errors that point at the exact place in a manifest.

use std::fmt;

/// One problem in one manifest document: where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// The file the document came from (`-` for standard input).
    pub file: String,
    /// Zero-based index of the YAML document in the file.
    pub document: usize,
    /// Dotted field path inside the document (`spec.ports[0].port`), empty for the whole document.
    pub field: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        if let Some(value) = &self.value {
            write!(f, " (value {value})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All the problems found in a set of manifests, reported together so the
/// operator can fix them in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
