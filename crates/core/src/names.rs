//! Names of members and groups, and the stable numeric node id derived from a name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Numeric member id used by the consensus layer. Derived from the member name so
/// that the same config copied to every node yields the same ids without the user
/// having to number anything.
pub type NodeId = u64;

/// FNV-1a of the name. Stable across versions and platforms; collisions between the
/// handful of members of one cluster are rejected by config validation.
pub fn node_id_for(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 is reserved by some Raft libraries as "no node".
    if hash == 0 {
        1
    } else {
        hash
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid name {name:?}: {reason}")]
pub struct NameError {
    pub name: String,
    pub reason: &'static str,
}

/// Names appear in certificates (as DNS labels), file names and metrics labels, so
/// they are restricted to lowercase letters, digits and '-', 1..=63 characters.
fn check_name(name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("must not be empty");
    }
    if name.len() > 63 {
        return err("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("may contain only lowercase letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return err("must not start or end with '-'");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        // Names become TLS certificate DNS names, which cannot be all digits.
        return err("must contain a letter");
    }
    Ok(())
}

macro_rules! name_type {
    ($ty:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check_name(&name)?;
                Ok(Self(name))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

name_type!(NodeName, "Name of a cluster member (node or witness).");
name_type!(GroupName, "Name of a resource group.");

impl NodeName {
    pub fn id(&self) -> NodeId {
        node_id_for(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(NodeName::new("alpha-1").is_ok());
        assert!(NodeName::new("").is_err());
        assert!(NodeName::new("Alpha").is_err());
        assert!(NodeName::new("-a").is_err());
        assert!(NodeName::new("a b").is_err());
        assert!(NodeName::new("123").is_err());
        assert!(NodeName::new("x".repeat(64)).is_err());
    }

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id_for("alpha"), node_id_for("alpha"));
        assert_ne!(node_id_for("alpha"), node_id_for("beta"));
        // Pinned: ids are persisted in Raft state, so the function must never change.
        assert_eq!(node_id_for("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
