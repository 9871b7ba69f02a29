//! Maps between key paths (`group[0].resource[1].address`) and places in the file
//! text. Validation works on plain structs that have forgotten where they came from,
//! so the text is parsed a second time with `toml_edit`, whose items keep their byte
//! spans, and looked up by path. The reverse direction (byte offset to key path) names
//! the key for errors that serde reports only by position.

use std::fmt;
use std::ops::Range;
use toml_edit::{ImDocument, Item, Table, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Path of a key from the document root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        KeyPath(segs)
    }
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(key) if i == 0 => f.write_str(key)?,
                Seg::Key(key) => write!(f, ".{key}")?,
                Seg::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// The file text plus its span-keeping parse (absent when the text is not valid TOML).
pub(crate) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line holding byte `offset`.
    pub fn line_of_offset(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// 1-based column of byte `offset` (counted in characters).
    pub fn column_of_offset(&self, offset: usize) -> usize {
        let mut end = offset.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let line_start = self.text[..end].rfind('\n').map_or(0, |i| i + 1);
        self.text[line_start..end].chars().count() + 1
    }

    /// The item at `path`, if the document has one there.
    pub fn item(&self, path: &KeyPath) -> Option<&Item> {
        let mut item = self.doc.as_ref()?.as_item();
        for seg in &path.0 {
            item = match seg {
                Seg::Key(key) => item.as_table_like()?.get(key)?,
                Seg::Index(index) => item.get(*index)?,
            };
        }
        Some(item)
    }

    /// Line of the key at `path`. A key that is absent from the text (a default, or a
    /// missing required key) resolves to its nearest written ancestor, usually the
    /// table header, which is where the user has to add it.
    pub fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut item = self.doc.as_ref()?.as_item();
        let mut best: Option<usize> = None;
        for seg in &path.0 {
            let (next, span) = match seg {
                Seg::Key(key) => {
                    let Some((k, next)) = item.as_table_like().and_then(|t| t.get_key_value(key))
                    else {
                        break;
                    };
                    let span = match next {
                        // A header table's own span is its `[header]` line; its key's
                        // span may point at a dotted header elsewhere.
                        Item::Table(table) => table.span().or_else(|| k.span()),
                        // Each element has its own header; the index step finds it.
                        Item::ArrayOfTables(_) => k.span(),
                        _ => k.span().or_else(|| next.span()),
                    };
                    (next, span)
                }
                Seg::Index(index) => {
                    let Some(next) = item.get(*index) else {
                        break;
                    };
                    (next, next.span())
                }
            };
            if let Some(span) = span {
                best = Some(span.start);
            }
            item = next;
        }
        best.map(|offset| self.line_of_offset(offset))
    }

    /// Path of the innermost key or table whose text contains byte `offset`.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        let mut spans = Vec::new();
        collect_item(doc.as_item(), &KeyPath::root(), &mut spans);
        spans
            .into_iter()
            .filter(|(span, _)| span.start <= offset && offset < span.end.max(span.start + 1))
            // Ties go to the later entry, which is the deeper one.
            .min_by_key(|(span, _)| span.end - span.start)
            .map(|(_, path)| path)
    }

    /// Best guess at the key on the line of `offset` when the text is not valid TOML
    /// (so there is no document to consult): the enclosing `[header]` plus the bare
    /// key on that line, with array-of-tables indices counted from the headers.
    pub fn guess_key_at(&self, offset: usize) -> String {
        let target = self.line_of_offset(offset);
        // Count of `[[name]]` headers seen, keyed by the indexed path of the name.
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut header = String::new();
        let mut key_on_line = None;
        for (n, raw) in self.text.lines().enumerate() {
            if n + 1 > target {
                break;
            }
            // Comments never hold keys; cutting at '#' also handles `[table] # note`.
            let line = raw.split('#').next().unwrap_or("").trim();
            if let Some(rest) = line.strip_prefix("[[") {
                let indexed = indexed_header(header_name(rest), &counts);
                let count = match counts.iter_mut().find(|(p, _)| *p == indexed) {
                    Some((_, c)) => {
                        *c += 1;
                        *c - 1
                    }
                    None => {
                        counts.push((indexed.clone(), 1));
                        0
                    }
                };
                header = format!("{indexed}[{count}]");
            } else if let Some(rest) = line.strip_prefix('[') {
                header = indexed_header(header_name(rest), &counts);
            } else if n + 1 == target {
                key_on_line = line
                    .split_once('=')
                    .map(|(k, _)| k.trim())
                    .filter(|k| {
                        !k.is_empty()
                            && k.bytes().all(|b| {
                                b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
                            })
                    })
                    .map(str::to_string);
            }
        }
        match key_on_line {
            Some(key) if header.is_empty() => key,
            Some(key) => format!("{header}.{key}"),
            None => header,
        }
    }
}

/// The dotted name inside a header, from the text after its opening bracket(s).
fn header_name(rest: &str) -> &str {
    rest.split(']').next().unwrap_or("").trim()
}

/// Rewrites a dotted header name so that every parent which is an array of tables
/// carries the index of its latest element: `group.resource` -> `group[1].resource`.
fn indexed_header(name: &str, counts: &[(String, usize)]) -> String {
    let parts: Vec<&str> = name.split('.').map(str::trim).collect();
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(part);
        let is_parent = i + 1 < parts.len();
        if let Some((_, count)) = counts.iter().find(|(p, _)| *p == out).filter(|_| is_parent) {
            out = format!("{out}[{}]", count.saturating_sub(1));
        }
    }
    out
}

fn push(spans: &mut Vec<(Range<usize>, KeyPath)>, span: Option<Range<usize>>, path: &KeyPath) {
    if let Some(span) = span {
        spans.push((span, path.clone()));
    }
}

fn collect_item(item: &Item, path: &KeyPath, spans: &mut Vec<(Range<usize>, KeyPath)>) {
    match item {
        Item::None => {}
        Item::Value(value) => collect_value(value, path, spans),
        Item::Table(table) => collect_table(table, path, spans),
        Item::ArrayOfTables(array) => {
            for (index, table) in array.iter().enumerate() {
                collect_table(table, &path.index(index), spans);
            }
        }
    }
}

fn collect_table(table: &Table, path: &KeyPath, spans: &mut Vec<(Range<usize>, KeyPath)>) {
    push(spans, table.span(), path);
    for (key, child) in table.iter() {
        let child_path = path.key(key);
        let key_span = table.key(key).and_then(|k| k.span());
        match child {
            Item::Value(value) => collect_key_value(key_span, value, &child_path, spans),
            other => {
                push(spans, key_span, &child_path);
                collect_item(other, &child_path, spans);
            }
        }
    }
}

/// A `key = value` pair: the key and everything up to the end of the value map to the
/// key's path, so an error anywhere on it names the key.
fn collect_key_value(
    key_span: Option<Range<usize>>,
    value: &Value,
    path: &KeyPath,
    spans: &mut Vec<(Range<usize>, KeyPath)>,
) {
    if let Some(key_span) = key_span {
        let end = value
            .span()
            .map_or(key_span.end, |v| v.end.max(key_span.end));
        spans.push((key_span.start..end, path.clone()));
    }
    collect_value(value, path, spans);
}

fn collect_value(value: &Value, path: &KeyPath, spans: &mut Vec<(Range<usize>, KeyPath)>) {
    push(spans, value.span(), path);
    match value {
        Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                collect_value(element, &path.index(index), spans);
            }
        }
        Value::InlineTable(table) => {
            for (key, child) in table.iter() {
                let key_span = table.key(key).and_then(|k| k.span());
                collect_key_value(key_span, child, &path.key(key), spans);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[cluster]
name = "shop"
[[cluster.member]]
name = "a"
[[group]]
name = "g"
nodes = ["a",
  "b"]
[[group.resource]]
type = "ip"
[[group.resource]]
type = "exec"
"#;

    fn path(segs: &[&str]) -> KeyPath {
        let mut p = KeyPath::root();
        for seg in segs {
            p = match seg.parse::<usize>() {
                Ok(i) => p.index(i),
                Err(_) => p.key(seg),
            };
        }
        p
    }

    #[test]
    fn key_paths_display_like_the_file() {
        assert_eq!(
            path(&["group", "0", "resource", "1", "address"]).to_string(),
            "group[0].resource[1].address"
        );
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn paths_resolve_to_lines() {
        let loc = Locator::new(TEXT);
        assert_eq!(loc.line_of(&path(&["cluster", "name"])), Some(2));
        assert_eq!(
            loc.line_of(&path(&["cluster", "member", "0", "name"])),
            Some(4)
        );
        assert_eq!(loc.line_of(&path(&["group", "0", "nodes", "1"])), Some(8));
        assert_eq!(
            loc.line_of(&path(&["group", "0", "resource", "1", "type"])),
            Some(12)
        );
        // Absent keys fall back to the table that should hold them.
        assert_eq!(
            loc.line_of(&path(&["group", "0", "resource", "1", "address"])),
            Some(11)
        );
        assert_eq!(loc.line_of(&path(&["cluster", "member", "5"])), Some(3));
        assert_eq!(loc.line_of(&path(&["nothing"])), None);
    }

    #[test]
    fn offsets_resolve_to_paths() {
        let loc = Locator::new(TEXT);
        let at = |needle: &str| {
            loc.path_at(TEXT.find(needle).unwrap())
                .map(|p| p.to_string())
        };
        assert_eq!(at("\"shop\"").as_deref(), Some("cluster.name"));
        assert_eq!(at("\"b\"").as_deref(), Some("group[0].nodes[1]"));
        assert_eq!(at("\"exec\"").as_deref(), Some("group[0].resource[1].type"));
    }

    #[test]
    fn broken_text_still_gets_a_key_guess() {
        let text = "[[group]]\nname = 1\n[[group]]\n[[group.resource]]\n[[group.resource]]\naddress = = 1\n";
        let loc = Locator::new(text);
        assert!(loc.item(&KeyPath::root()).is_none());
        let offset = text.find("= =").unwrap();
        assert_eq!(loc.guess_key_at(offset), "group[1].resource[1].address");
        assert_eq!(loc.line_of_offset(offset), 6);
        assert_eq!(loc.column_of_offset(offset), 9);
        // Offsets past the end or inside a multi-byte character are clamped, not a panic.
        assert_eq!(Locator::new("é").column_of_offset(1), 1);
        assert_eq!(Locator::new("a\nb").line_of_offset(99), 2);
    }
}
