//! `validate()`: turns the file structs into the typed [`Config`], applying defaults
//! and checking every value and cross-field rule. It keeps going after a problem so
//! that one run of `uphold check` reports everything wrong with the file.
//!
//! Each role validates its own sections (`cluster::validate`, `sync::validate`,
//! `balance::validate`); the checks of shared values are in `values`.

use crate::balance::{validate_balance, validate_balancer};
use crate::cluster::{validate_cluster, validate_groups};
use crate::error::{ConfigError, ConfigWarning};
use crate::file::FileConfig;
use crate::locate::{KeyPath, Locator};
use crate::model::Config;
use crate::sync::validate_sync;

/// Collects errors and warnings, each tied to a key path and, through the locator, a line.
pub(crate) struct Ctx<'a> {
    file: &'a str,
    loc: &'a Locator<'a>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
}

impl<'a> Ctx<'a> {
    pub fn new(file: &'a str, loc: &'a Locator<'a>) -> Self {
        Ctx {
            file,
            loc,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: self.loc.line_of(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    pub(crate) fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_string(),
            line: self.loc.line_of(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    /// "line 12" when the key is in the text, else its key path; for messages that
    /// point at a second place (the first of two duplicates).
    pub(crate) fn place(&self, path: &KeyPath) -> String {
        match self.loc.line_of(path) {
            Some(line) => format!("line {line}"),
            None => format!("key {path}"),
        }
    }
}

/// Builds the typed config. The result is meaningful only when `ctx.errors` is empty.
pub(crate) fn validate(file: FileConfig, ctx: &mut Ctx<'_>) -> Config {
    let root = KeyPath::root();
    if file.is_empty() {
        ctx.warn(&root, "no sections; nothing to run");
        return Config {
            cluster: None,
            sync: Vec::new(),
            balance: Vec::new(),
            balancer: Default::default(),
        };
    }
    let groups = file.group.unwrap_or_default();
    let cluster = match file.cluster {
        Some(cluster) => {
            let other_roles = file.sync.as_ref().is_some_and(|s| !s.is_empty());
            validate_cluster(ctx, cluster, groups, other_roles)
        }
        None => {
            if !groups.is_empty() {
                ctx.error(
                    &root.key("group").index(0),
                    "[[group]] needs a [cluster] section whose members can run it",
                );
                // Still check the groups themselves so every mistake shows up in one run.
                validate_groups(ctx, groups, &[]);
            }
            None
        }
    };
    let sync = validate_sync(ctx, file.sync.unwrap_or_default(), cluster.as_ref());
    let balance = validate_balance(ctx, file.balance.unwrap_or_default());
    let balancer = validate_balancer(ctx, file.balancer);
    Config {
        cluster,
        sync,
        balance,
        balancer,
    }
}
