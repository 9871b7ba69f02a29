//! The `[[balance]]` role: its file struct, its typed form and its validation.
//! (Placeholder: filled in by the balance work of issue 4.)

use crate::locate::KeyPath;
use crate::validate::Ctx;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BalanceFile {
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BalanceConfig {
    pub name: String,
}

pub(crate) fn validate_balance(
    ctx: &mut Ctx<'_>,
    frontends: Vec<BalanceFile>,
) -> Vec<BalanceConfig> {
    let list = KeyPath::root().key("balance");
    let mut out = Vec::new();
    for (i, f) in frontends.into_iter().enumerate() {
        match f.name {
            Some(name) => out.push(BalanceConfig { name }),
            None => ctx.error(&list.index(i).key("name"), "[[balance]] is missing `name`"),
        }
    }
    out
}
