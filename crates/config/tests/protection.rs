//! `[cluster]` `lock_memory`, `cpu_priority` and `io_priority`: the defaults, every
//! accepted value, and the messages for values that are not.

use uphold_config::{parse_str, ConfigError, CpuPriority, IoPriority, Protection};

/// A valid cluster with `extra` lines at the end of `[cluster]` (line 3 onwards).
fn file(extra: &str) -> String {
    format!(
        "[cluster]\nname = \"shop\"\n{extra}\n\
         [[cluster.member]]\nname = \"alpha\"\naddress = \"10.0.0.1:7400\"\n"
    )
}

fn protection(extra: &str) -> Protection {
    let loaded = parse_str(&file(extra), "t.toml").unwrap_or_else(|e| panic!("{e}"));
    loaded.config.cluster.unwrap().protection
}

fn only_error(extra: &str) -> ConfigError {
    let errors = match parse_str(&file(extra), "t.toml") {
        Ok(_) => panic!("expected an error for {extra:?}"),
        Err(errors) => errors,
    };
    assert_eq!(errors.len(), 1, "{errors}");
    errors.errors[0].clone()
}

#[test]
fn defaults_lock_memory_and_raise_cpu_and_io_priority() {
    let p = protection("");
    assert_eq!(p, Protection::default());
    assert_eq!(
        p,
        Protection {
            lock_memory: true,
            cpu_priority: CpuPriority::High,
            io_priority: IoPriority::High,
        }
    );
}

#[test]
fn every_accepted_value_lands_in_the_model() {
    assert!(!protection("lock_memory = false").lock_memory);
    assert!(protection("lock_memory = true").lock_memory);
    for (word, want) in [
        ("normal", CpuPriority::Normal),
        ("high", CpuPriority::High),
        ("realtime", CpuPriority::Realtime),
    ] {
        let p = protection(&format!("cpu_priority = \"{word}\""));
        assert_eq!(p.cpu_priority, want);
        assert_eq!(want.as_str(), word);
        // The other keys keep their defaults.
        assert!(p.lock_memory);
        assert_eq!(p.io_priority, IoPriority::High);
    }
    for (word, want) in [("normal", IoPriority::Normal), ("high", IoPriority::High)] {
        let p = protection(&format!("io_priority = \"{word}\""));
        assert_eq!(p.io_priority, want);
        assert_eq!(want.as_str(), word);
        assert_eq!(p.cpu_priority, CpuPriority::High);
    }
    let all =
        protection("lock_memory = false\ncpu_priority = \"normal\"\nio_priority = \"normal\"");
    assert_eq!(
        all,
        Protection {
            lock_memory: false,
            cpu_priority: CpuPriority::Normal,
            io_priority: IoPriority::Normal,
        }
    );
}

#[test]
fn unknown_cpu_priority_names_file_line_key_and_the_allowed_values() {
    let e = only_error("cpu_priority = \"rt\"");
    assert_eq!(
        e.to_string(),
        "t.toml:3: invalid cpu_priority \"rt\": expected \"normal\", \"high\" or \"realtime\" \
         (key cluster.cpu_priority)"
    );
    // Values are lowercase words; no other spelling is guessed at.
    let e = only_error("cpu_priority = \"High\"");
    assert_eq!(e.key, "cluster.cpu_priority");
    assert!(e.message.contains("\"High\""), "{e}");
}

#[test]
fn unknown_io_priority_names_file_line_key_and_the_allowed_values() {
    let e = only_error("io_priority = \"realtime\"");
    assert_eq!(
        e.to_string(),
        "t.toml:3: invalid io_priority \"realtime\": expected \"normal\" or \"high\" \
         (key cluster.io_priority)"
    );
}

#[test]
fn bad_values_are_all_reported_in_one_run() {
    let errors = parse_str(
        &file("cpu_priority = \"max\"\nio_priority = \"low\""),
        "t.toml",
    )
    .unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["cluster.cpu_priority", "cluster.io_priority"],
        "{errors}"
    );
}

#[test]
fn wrong_types_name_the_key_and_line() {
    let e = only_error("lock_memory = \"yes\"");
    assert_eq!(e.file, "t.toml");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key, "cluster.lock_memory", "{e}");
    let e = only_error("cpu_priority = 10");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key, "cluster.cpu_priority", "{e}");
}
