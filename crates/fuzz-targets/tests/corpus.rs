//! Corpus replay plus blind mutation for every fuzz target, on the stable toolchain
//! that CI has. Each target replays every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` and its seeds, then runs random mutations of them
//! (bit flips, byte changes, inserts, deletes, splices, truncations) for
//! `UPHOLD_FUZZ_SECS` seconds (default 5). This is not coverage-guided fuzzing,
//! which is `cargo +nightly fuzz run <target>` (fuzz/README.md): it keeps what the
//! fuzzer found passing and tries cheap variations of it on every CI run.
//!
//! A failure names the target, prints the RNG seed (`UPHOLD_FUZZ_SEED=N` replays
//! the same mutations) and writes the failing input to a file it names. A crash
//! that aborts the process loses the captured output: `-- --nocapture` shows each
//! target's seed as it starts.
//!
//! `cargo test -p uphold-fuzz-targets --test corpus -- --ignored write_seed_corpus`
//! writes the seeds into `fuzz/corpus/` again.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uphold_fuzz_targets::{target, Target, TARGETS};

/// Longest mutated input; libFuzzer's own default is 4 KiB.
const MAX_INPUT: usize = 64 * 1024;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir` in name order; none when it does not exist.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The panic's message, when `target` panics on `input`.
fn attempt(target: &Target, input: &[u8]) -> Result<(), String> {
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input))).map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

/// Where a failing input is kept, so that it can become a regression file.
fn keep_failure(name: &str, seed: u64, index: u64, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    fs::create_dir_all(&dir).expect("creating the failures folder");
    let path = dir.join(format!("{name}-seed{seed}-{index}"));
    fs::write(&path, input).expect("writing the failing input");
    path
}

/// Values that sit on the edges of length and count checks.
const EDGES: [u64; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    u64::MAX,
];

/// One to four random edits of a random pool entry.
fn mutate(rng: &mut ChaCha8Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = pool[rng.gen_range(0..pool.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let len = data.len();
        let at = rng.gen_range(0..=len);
        match rng.gen_range(0..8) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                data[i] = rng.gen();
            }
            2 => {
                let n = rng.gen_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                data.splice(at..at, bytes);
            }
            3 if at < len => {
                let end = rng.gen_range(at + 1..=len.min(at + 64));
                data.drain(at..end);
            }
            4 => {
                let other = &pool[rng.gen_range(0..pool.len())];
                let from = rng.gen_range(0..=other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            5 => data.truncate(at),
            6 if at < len => {
                let end = rng.gen_range(at + 1..=len.min(at + 64));
                let copy = data[at..end].to_vec();
                let to = rng.gen_range(0..=len);
                data.splice(to..to, copy);
            }
            7 => {
                let value = EDGES[rng.gen_range(0..EDGES.len())];
                let width = [1, 2, 4, 8][rng.gen_range(0..4)];
                // The low `width` bytes, in either byte order.
                let field = if rng.gen() {
                    value.to_le_bytes()[..width].to_vec()
                } else {
                    value.to_be_bytes()[8 - width..].to_vec()
                };
                let end = (at + width).min(len);
                data.splice(at..end, field);
            }
            _ => {}
        }
    }
    data.truncate(MAX_INPUT);
    data
}

fn replay_and_mutate(name: &str) {
    let target = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let mut pool = Vec::new();
    for folder in ["corpus", "regressions"] {
        for (path, input) in inputs(&fuzz_dir().join(folder).join(name)) {
            if let Err(why) = attempt(target, &input) {
                panic!("{name}: {} fails: {why}", path.display());
            }
            pool.push(input);
        }
    }
    for (seed_name, input) in (target.seeds)() {
        if let Err(why) = attempt(target, &input) {
            panic!("{name}: seed {seed_name} fails: {why}");
        }
        pool.push(input);
    }
    let replayed = pool.len();
    let seed = env_number("UPHOLD_FUZZ_SEED").unwrap_or_else(rand::random);
    let secs = env_number("UPHOLD_FUZZ_SECS").unwrap_or(5);
    eprintln!("{name}: seed {seed}, {secs} s of mutations");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let input = mutate(&mut rng, &pool);
        if let Err(why) = attempt(target, &input) {
            let kept = keep_failure(name, seed, runs, &input);
            panic!(
                "{name}: mutated input {runs} of seed {seed} panics: {why}\n\
                 input written to {}\n\
                 replay: UPHOLD_FUZZ_SEED={seed} cargo test -p uphold-fuzz-targets --test corpus {name}",
                kept.display()
            );
        }
        runs += 1;
    }
    eprintln!("{name}: {replayed} inputs replayed, {runs} mutations run");
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay_and_mutate(stringify!($name));
            }
        )*

        const TESTED: &[&str] = &[$(stringify!($name)),*];
    };
}

targets!(
    frame,
    handshake,
    rpc,
    sync_protocol,
    config,
    delta_apply,
    http_request_head,
);

/// Every target is tested here, has its cargo-fuzz script calling it, and a kept
/// corpus; no script calls a target that does not exist.
#[test]
fn every_target_has_a_test_a_fuzz_script_and_a_corpus() {
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(TESTED, names.as_slice());
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for name in &names {
        let script = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text =
            fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        assert!(
            text.contains(&format!("uphold_fuzz_targets::{name}(data)")),
            "{} does not call its target",
            script.display()
        );
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        assert!(
            !inputs(&fuzz_dir().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name} is empty"
        );
    }
    let scripts = fs::read_dir(fuzz_dir().join("fuzz_targets")).expect("fuzz/fuzz_targets");
    for script in scripts {
        let path = script.expect("a readable folder").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        assert!(names.contains(&stem), "{} has no target", path.display());
    }
}

/// Writes each target's seeds to `fuzz/corpus/<target>/seed-<name>`.
#[test]
#[ignore = "writes into the source tree; run when the seeds change"]
fn write_seed_corpus() {
    for target in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target.name);
        fs::create_dir_all(&dir).expect("creating the corpus folder");
        for (name, input) in (target.seeds)() {
            fs::write(dir.join(format!("seed-{name}")), input).expect("writing a seed");
        }
    }
}
