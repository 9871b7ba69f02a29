//! Which owners and groups a sync set's receivers keep as sent (`owners` and
//! `groups` of a `[[sync]]` set), and their validation. A member that sends a
//! set decides the files' contents; these lists decide which local accounts it
//! may hand those files to. Everything else is owned by root on the targets.

use crate::locate::KeyPath;
use crate::validate::Ctx;
use serde::Deserialize;
use std::ops::RangeInclusive;

/// An `owners` or `groups` entry as written: an account name, a numeric id, or
/// a range of ids such as `"2000-2999"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum IdText {
    Number(i64),
    Text(String),
}

/// The ids of one list, as inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptIds(Vec<RangeInclusive<u32>>);

impl KeptIds {
    pub fn new(ranges: impl IntoIterator<Item = RangeInclusive<u32>>) -> KeptIds {
        KeptIds(ranges.into_iter().collect())
    }

    pub fn keeps(&self, id: u32) -> bool {
        self.0.iter().any(|range| range.contains(&id))
    }
}

/// The set's rule for ownership. A list that is not configured keeps every id
/// as sent (rsync -a, lsyncd's default): web roots owned by `www-data` and by
/// per-site accounts keep working after a failover without configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    pub owners: Option<KeptIds>,
    pub groups: Option<KeptIds>,
}

impl Ownership {
    /// The owner a target gets for a file sent with owner `uid`.
    pub fn uid(&self, uid: u32) -> u32 {
        match &self.owners {
            Some(kept) if !kept.keeps(uid) => 0,
            _ => uid,
        }
    }

    /// The group a target gets for a file sent with group `gid`.
    pub fn gid(&self, gid: u32) -> u32 {
        match &self.groups {
            Some(kept) if !kept.keeps(gid) => 0,
            _ => gid,
        }
    }
}

/// Which table an entry's names are looked up in.
#[derive(Clone, Copy)]
pub(crate) enum IdKind {
    User,
    Group,
}

impl IdKind {
    fn word(self) -> &'static str {
        match self {
            IdKind::User => "user",
            IdKind::Group => "group",
        }
    }

    fn key(self) -> &'static str {
        match self {
            IdKind::User => "owners",
            IdKind::Group => "groups",
        }
    }

    /// Names are resolved on this host when the config is loaded: files travel
    /// with numeric ids, so every member must give the name the same id (as
    /// Debian's fixed system accounts do).
    fn lookup(self, name: &str) -> Option<u32> {
        match self {
            IdKind::User => nix::unistd::User::from_name(name)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw()),
            IdKind::Group => nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw()),
        }
    }
}

fn id_number(text: &str) -> Option<u32> {
    text.trim().parse::<u32>().ok()
}

/// Validates one list. `Some(None)`: not configured; `None`: an error was recorded.
pub(crate) fn kept_ids(
    ctx: &mut Ctx<'_>,
    path: &KeyPath,
    who: &str,
    kind: IdKind,
    value: Option<Vec<IdText>>,
) -> Option<Option<KeptIds>> {
    let Some(entries) = value else {
        return Some(None);
    };
    let key = kind.key();
    let mut ranges = Vec::with_capacity(entries.len());
    let mut ok = true;
    for (i, entry) in entries.into_iter().enumerate() {
        let at = path.index(i);
        let range = match entry {
            IdText::Number(n) => u32::try_from(n).ok().map(|id| id..=id).ok_or_else(|| {
                format!("{who}: invalid {} id {n}: must be 0 to 4294967295", kind.word())
            }),
            // "www-data" has a dash too: only two numbers make a range.
            IdText::Text(text) => match text
                .split_once('-')
                .and_then(|(low, high)| Some((id_number(low)?, id_number(high)?)))
            {
                Some((low, high)) => {
                    if low <= high {
                        Ok(low..=high)
                    } else {
                        Err(format!("{who}: the range {text:?} runs backwards"))
                    }
                }
                _ => match id_number(&text).or_else(|| kind.lookup(&text)) {
                    Some(id) => Ok(id..=id),
                    None => Err(format!(
                        "{who}: {} {text:?} does not exist on this host; `{key}` takes names every member has, ids, or ranges such as \"2000-2999\"",
                        kind.word()
                    )),
                },
            },
        };
        match range {
            Ok(range) => ranges.push(range),
            Err(message) => {
                ctx.error(&at, message);
                ok = false;
            }
        }
    }
    ok.then_some(Some(KeptIds(ranges)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_ids_go_to_root_and_an_unset_list_keeps_all() {
        let ownership = Ownership {
            owners: Some(KeptIds(vec![33..=33, 2000..=2999])),
            groups: None,
        };
        assert_eq!(ownership.uid(33), 33);
        assert_eq!(ownership.uid(2500), 2500);
        assert_eq!(ownership.uid(1000), 0);
        assert_eq!(ownership.uid(0), 0);
        assert_eq!(ownership.gid(1000), 1000);
        assert_eq!(Ownership::default().uid(4242), 4242);
    }
}
