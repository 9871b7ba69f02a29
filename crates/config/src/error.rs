//! Error and warning values produced while loading a config file. Every one names the
//! file, the line (when the text has one) and the key path, so `uphold check` output
//! can be acted on without guessing.

use std::fmt;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Label of the file, usually its path as given on the command line. Empty when the
    /// error is not about a particular file (e.g. choosing this node's identity).
    pub file: String,
    /// 1-based line of the offending key, when it could be located.
    pub line: Option<usize>,
    /// Path of the offending key, e.g. `group[0].resource[1].address` (indices 0-based).
    /// Empty for problems with the file as a whole.
    pub key: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

/// Something legal but probably not what the user wants (e.g. two voters). Displayed
/// like [`ConfigError`]; the caller adds the "warning" label (or log level).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

fn write_location(f: &mut fmt::Formatter<'_>, file: &str, line: Option<usize>) -> fmt::Result {
    match (file.is_empty(), line) {
        (false, Some(line)) => write!(f, "{file}:{line}: "),
        (false, None) => write!(f, "{file}: "),
        (true, Some(line)) => write!(f, "line {line}: "),
        (true, None) => Ok(()),
    }
}

fn write_key(f: &mut fmt::Formatter<'_>, key: &str) -> fmt::Result {
    if key.is_empty() {
        Ok(())
    } else {
        write!(f, " (key {key})")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line)?;
        f.write_str(&self.message)?;
        write_key(f, &self.key)
    }
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_location(f, &self.file, self.line)?;
        f.write_str(&self.message)?;
        write_key(f, &self.key)
    }
}

/// Every error found in one file, in file order as far as validation allows. Never empty
/// when returned by this crate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }
    pub fn len(&self) -> usize {
        self.errors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors {
            errors: vec![error],
        }
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

/// One error per line, so the output reads like a compiler's.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
