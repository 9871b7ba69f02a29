//! The keys each section of the file accepts, read from the file structs
//! themselves (serde hands a struct's field names to its deserializer), so the
//! reference in `CONFIG.md` is checked against the one place keys are declared.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A section as `CONFIG.md` heads it, and the keys the parser accepts in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub heading: &'static str,
    pub keys: &'static [&'static str],
}

/// Every section of the file with its keys. Inline tables documented inside
/// another section's row (a frontend's `tls` list) are listed under their own
/// name too.
pub fn sections() -> Vec<Section> {
    use crate::balance::file::{BalanceFile, BalancerFile, CheckFile, ServerFile, TlsFile};
    use crate::cluster::file::{ClusterFile, ExecFile, GroupFile, IpFile, MemberFile};
    use crate::sync::file::SyncFile;
    vec![
        section::<ClusterFile>("[cluster]"),
        section::<MemberFile>("[[cluster.member]]"),
        section::<GroupFile>("[[group]]"),
        Section {
            heading: "[[group.resource]]",
            keys: &["type"],
        },
        section::<IpFile>("type = \"ip\""),
        section::<ExecFile>("type = \"exec\""),
        section::<SyncFile>("[[sync]]"),
        section::<BalanceFile>("[[balance]]"),
        section::<TlsFile>("[[balance.tls]]"),
        section::<ServerFile>("[[balance.server]]"),
        section::<CheckFile>("[balance.check]"),
        section::<BalancerFile>("[balancer]"),
    ]
}

fn section<'de, T: Deserialize<'de>>(heading: &'static str) -> Section {
    Section {
        heading,
        keys: field_names::<T>(),
    }
}

/// The names serde gives `T`'s fields (after renames); empty if `T` is not a struct.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names = FieldNames(None);
    // The deserializer stops at the first call: only the names are wanted.
    let _ = T::deserialize(&mut names);
    names.0.unwrap_or(&[])
}

struct FieldNames(Option<&'static [&'static str]>);

impl<'de> Deserializer<'de> for &mut FieldNames {
    type Error = de::value::Error;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0 = Some(fields);
        Err(de::Error::custom("field names read"))
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        enum identifier ignored_any
    }
}
