//! Configuration: TOML file structs (unknown keys rejected) -> `validate()` -> the
//! typed [`Config`]. Every error names the file, line and key; see `CONFIG.md` for
//! the reference of every key.
//!
//! Each role has a module with its file structs, typed model and validation:
//! `cluster` (with its groups and resources), `sync` and `balance`. `values`
//! holds what they share (durations, addresses, argv); `file`, `model` and
//! `validate` put the roles together into the whole file.

pub mod balance;
mod cluster;
mod error;
mod file;
mod identity;
pub mod keys;
mod locate;
pub mod model;
pub mod sync;
mod validate;
mod values;

pub use error::{ConfigError, ConfigErrors, ConfigWarning};
pub use identity::{select_member, short_hostname};
pub use model::*;
pub use sync::owners;

use cluster::file::{ExecFile, IpFile};
use file::FileConfig;
use locate::{KeyPath, Locator};
use std::ops::Range;
use std::path::Path;

/// A validated config and the warnings found on the way.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigWarning>,
}

/// Largest config file accepted. A real cluster's config is a few KiB; the cap
/// keeps a runaway generator (or `/dev/zero`) from taking gigabytes of memory and
/// minutes of parsing in the daemon that holds the cluster.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Reads, parses and validates the file at `path`. Errors are labelled with `path`
/// as given.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let label = path.display().to_string();
    let whole_file_error = |message: String| -> ConfigErrors {
        ConfigError {
            file: label.clone(),
            line: None,
            key: String::new(),
            message,
        }
        .into()
    };
    let text = read_bounded(path, MAX_CONFIG_BYTES)
        .map_err(|e| whole_file_error(format!("cannot read config file: {e}")))?;
    parse_str(&text, &label)
}

/// The file's text, refused when it holds more than `limit` bytes; never reads
/// more than `limit + 1`.
pub(crate) fn read_bounded(path: &Path, limit: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(text)
}

/// Parses and validates `text`; `file_label` names it in messages.
pub fn parse_str(text: &str, file_label: &str) -> Result<Loaded, ConfigErrors> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError {
            file: file_label.to_string(),
            line: None,
            key: String::new(),
            message: format!(
                "config is {} bytes, larger than the limit of {MAX_CONFIG_BYTES} bytes",
                text.len()
            ),
        }
        .into());
    }
    let loc = Locator::new(text);
    let file: FileConfig = match toml::from_str(text) {
        Ok(file) => file,
        Err(e) => return Err(de_error(&loc, file_label, e.message(), e.span()).into()),
    };
    let mut ctx = validate::Ctx::new(file_label, &loc);
    let config = validate::validate(file, &mut ctx);
    if ctx.errors.is_empty() {
        Ok(Loaded {
            config,
            warnings: ctx.warnings,
        })
    } else {
        Err(ConfigErrors { errors: ctx.errors })
    }
}

/// Serde and the TOML parser report one error, by byte span. This names the key.
fn de_error(
    loc: &Locator<'_>,
    file: &str,
    message: &str,
    span: Option<Range<usize>>,
) -> ConfigError {
    let message = one_line(message);
    let Some(span) = span else {
        return ConfigError {
            file: file.to_string(),
            line: None,
            key: String::new(),
            message,
        };
    };
    if loc.item(&KeyPath::root()).is_none() {
        // Not valid TOML, so there is no document to look keys up in.
        return ConfigError {
            file: file.to_string(),
            line: Some(loc.line_of_offset(span.start)),
            key: loc.guess_key_at(span.start),
            message: format!(
                "TOML syntax error at column {}: {message}",
                loc.column_of_offset(span.start)
            ),
        };
    }
    if let Some((detail, detail_span)) = resource_detail(loc, &message, &span) {
        return located(loc, file, one_line(&detail), detail_span);
    }
    located(loc, file, message, Some(span))
}

fn located(
    loc: &Locator<'_>,
    file: &str,
    message: String,
    span: Option<Range<usize>>,
) -> ConfigError {
    let mut path = span
        .as_ref()
        .and_then(|s| loc.path_at(s.start))
        .unwrap_or_else(KeyPath::root);
    let mut line = span.map(|s| loc.line_of_offset(s.start));
    if let Some(field) = quoted_field(&message, "unknown field `") {
        let is_child = loc
            .item(&path)
            .and_then(|item| item.as_table_like())
            .is_some_and(|table| table.contains_key(field));
        if is_child {
            path = path.key(field);
            line = loc.line_of(&path).or(line);
        }
    } else if let Some(field) = quoted_field(&message, "missing field `") {
        path = path.key(field);
    }
    ConfigError {
        file: file.to_string(),
        line,
        key: path.to_string(),
        message,
    }
}

/// Resources are an internally tagged enum, and serde reports errors inside one against
/// the enclosing table or array, without naming the key. Deserializing each resource
/// table again as its variant's struct finds the one at fault and the span of its key.
/// A resource counts only if it lies inside the reported span and fails with the very
/// same message.
fn resource_detail(
    loc: &Locator<'_>,
    message: &str,
    span: &Range<usize>,
) -> Option<(String, Option<Range<usize>>)> {
    let groups = loc.item(&KeyPath::root().key("group"))?;
    for gi in 0.. {
        let Some(group) = groups.get(gi) else { break };
        let Some(resources) = group.as_table_like().and_then(|g| g.get("resource")) else {
            continue;
        };
        for ri in 0.. {
            let Some(resource) = resources.get(ri) else {
                break;
            };
            let Some(error) = resource_error(resource) else {
                continue;
            };
            if one_line(error.message()) != message {
                continue;
            }
            let start = resource.span().map(|s| s.start);
            if start.is_some_and(|s| span.start <= s && s < span.end) {
                return Some((error.message().to_string(), error.span()));
            }
        }
    }
    None
}

/// The error from deserializing one resource table as the struct its `type` names.
fn resource_error(item: &toml_edit::Item) -> Option<toml_edit::de::Error> {
    let mut table = match item {
        toml_edit::Item::Table(table) => table.clone(),
        other => other.as_inline_table()?.clone().into_table(),
    };
    let kind = table.get("type")?.as_str()?.to_string();
    table.remove("type");
    let doc = toml_edit::DocumentMut::from(table);
    match kind.as_str() {
        "ip" => toml_edit::de::from_document::<IpFile>(doc).err(),
        "exec" => toml_edit::de::from_document::<ExecFile>(doc).err(),
        _ => None,
    }
}

/// The name between backticks after `prefix`, as in serde's "unknown field `x`".
fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split('`').next()
}

fn one_line(message: &str) -> String {
    message
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
