//! `[[sync]]` validation of who may own what on the targets: `owners` and
//! `groups` by name, id or range, and a clear error for each way of getting
//! them wrong.

use uphold_config::owners::{KeptIds, Ownership};

const CLUSTER: &str = "[cluster]\nname = \"shop\"\n\
    [[cluster.member]]\nname = \"a\"\naddress = \"10.0.0.1:7400\"\n\
    [[cluster.member]]\nname = \"b\"\naddress = \"10.0.0.2:7400\"\n";

fn set(lines: &str) -> String {
    format!("{CLUSTER}[[sync]]\nname = \"www\"\nsource = \"/var/www\"\nfrom = \"a\"\n{lines}\n")
}

fn ownership(lines: &str) -> Ownership {
    match uphold_config::parse_str(&set(lines), "s.toml") {
        Ok(loaded) => loaded.config.sync[0].ownership.clone(),
        Err(e) => panic!("{e:?}"),
    }
}

fn errors(lines: &str) -> Vec<String> {
    match uphold_config::parse_str(&set(lines), "s.toml") {
        Ok(l) => panic!("expected errors, got {:?}", l.config.sync),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn unset_lists_keep_every_owner_and_set_ones_only_theirs() {
    assert_eq!(ownership(""), Ownership::default());
    let root = nix::unistd::User::from_name("root").unwrap().unwrap();
    // A name with a dash is a name, not a range.
    let www = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    let got = ownership("owners = [\"root\", \"www-data\", 33, \"2000-2999\"]\ngroups = [\"0\"]");
    assert_eq!(
        got,
        Ownership {
            owners: Some(KeptIds::new([
                root.uid.as_raw()..=root.uid.as_raw(),
                www.uid.as_raw()..=www.uid.as_raw(),
                33..=33,
                2000..=2999
            ])),
            groups: Some(KeptIds::new([0..=0])),
        }
    );
    assert_eq!(got.uid(2999), 2999);
    assert_eq!(got.uid(3000), 0);
    assert_eq!(got.gid(33), 0);
}

#[test]
fn wrong_entries_are_named_with_their_line_and_key() {
    let cases = [
        (
            "owners = [\"uphold-no-such-user\"]",
            "s.toml:13: sync \"www\": user \"uphold-no-such-user\" does not exist on this host",
            "(key sync[0].owners[0])",
        ),
        (
            "groups = [33, \"uphold-no-such-group\"]",
            "group \"uphold-no-such-group\" does not exist on this host",
            "(key sync[0].groups[1])",
        ),
        (
            "owners = [\"2999-2000\"]",
            "the range \"2999-2000\" runs backwards",
            "(key sync[0].owners[0])",
        ),
        (
            "owners = [-1]",
            "invalid user id -1: must be 0 to 4294967295",
            "(key sync[0].owners[0])",
        ),
        (
            "groups = [4294967296]",
            "invalid group id 4294967296",
            "(key sync[0].groups[0])",
        ),
    ];
    for (lines, want, key) in cases {
        let errs = errors(lines);
        assert!(
            errs.len() == 1 && errs[0].contains(want) && errs[0].ends_with(key),
            "{lines}: want one error with {want:?} and {key:?}, got {errs:#?}"
        );
    }
}
