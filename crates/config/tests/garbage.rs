//! Property: no input text makes the loader panic, and every error it returns still
//! names the file and a line that exists.

use proptest::prelude::*;
use uphold_config::parse_str;

const VALID: &str = r#"[cluster]
name = "shop"
lease = "800ms"
[[cluster.member]]
name = "a"
address = "10.0.0.1:7400"
[[cluster.member]]
name = "b"
address = "[2001:db8::2]:7400"
role = "witness"
[[group]]
name = "web"
nodes = ["a"]
[[group.resource]]
type = "ip"
address = "10.0.0.100/24"
interface = "eth0"
[[group.resource]]
type = "exec"
name = "x"
start = ["/bin/true"]
stop = ["/bin/true"]
failures = 2
"#;

const TOKENS: &[&str] = &[
    "[cluster]",
    "[[cluster.member]]",
    "[[group]]",
    "[[group.resource]]",
    "[mysql]",
    "\n",
    " = ",
    "name",
    "address",
    "type",
    "\"ip\"",
    "\"exec\"",
    "role",
    "\"witness\"",
    "nodes",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "\"10.0.0.1:7400\"",
    "\"10.0.0.1/33\"",
    "\"0s\"",
    "\"800ms\"",
    "-1",
    "1e400",
    "nan",
    "inf",
    "18446744073709551616",
    "true",
    "start",
    "[\"\"]",
    "\"a\\u0000b\"",
    ".",
    "#",
    "\"\"\"",
    "é",
    "\u{0}",
    "\r\n",
    "interface",
    "\"averyverylongname\"",
    "lease",
    "cluster.member",
    "failures",
    "arp_count",
    "= [{type = \"ip\"}]",
];

fn check(text: &str) {
    let lines = text.lines().count() + 1;
    if let Err(errors) = parse_str(text, "g.toml") {
        assert!(!errors.is_empty());
        for error in &errors {
            assert_eq!(error.file, "g.toml");
            assert!(!error.message.is_empty());
            if let Some(line) = error.line {
                assert!(
                    line >= 1 && line <= lines,
                    "line {line} of {lines}: {error}"
                );
            }
            let _ = error.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..60)) {
        check(&tokens.concat());
    }

    #[test]
    fn mutated_valid_files_never_panic(
        cut in 0..VALID.len(),
        len in 0usize..40,
        insert in prop::sample::select(TOKENS),
    ) {
        let mut bytes = VALID.as_bytes().to_vec();
        let end = (cut + len).min(bytes.len());
        bytes.splice(cut..end, insert.bytes());
        check(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn the_unmutated_file_is_valid() {
    parse_str(VALID, "g.toml").unwrap();
}
