//! The configuration file, as `uphold check` and the daemon read it.

use uphold_config::parse_str;

use crate::named;

/// What errors are labelled with.
const LABEL: &str = "fuzz.toml";

/// The text parsed and validated as `uphold_config::load` does once it has read
/// the file (invalid UTF-8 is replaced rather than refused, to reach the parser
/// with more inputs). Every error must name the file and, when it gives a line,
/// one the text has.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Err(errors) = parse_str(&text, LABEL) else {
        return;
    };
    // The line after a final newline counts: an error at the end of the text is there.
    let lines = text.split('\n').count();
    assert!(!errors.is_empty(), "a refusal without a reason");
    for error in &errors {
        assert_eq!(error.file, LABEL, "an error that does not name the file");
        if let Some(line) = error.line {
            assert!(
                (1..=lines).contains(&line),
                "an error on line {line} of a {lines}-line text: {error}"
            );
        }
    }
}

pub(crate) fn config_seeds() -> Vec<(String, Vec<u8>)> {
    // The shipped examples: every section a real file has, all of them valid.
    named(vec![
        (
            "cluster",
            include_bytes!("../../../examples/cluster.toml").to_vec(),
        ),
        (
            "two-nodes-witness",
            include_bytes!("../../../examples/two-nodes-witness.toml").to_vec(),
        ),
        (
            "sync",
            include_bytes!("../../../examples/sync.toml").to_vec(),
        ),
        (
            "balance",
            include_bytes!("../../../examples/balance.toml").to_vec(),
        ),
        (
            "web-stack",
            include_bytes!("../../../examples/web-stack.toml").to_vec(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_valid_configs() {
        for (name, text) in config_seeds() {
            let text = String::from_utf8(text).expect("UTF-8");
            assert!(parse_str(&text, LABEL).is_ok(), "{name}");
        }
    }
}
