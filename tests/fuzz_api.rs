//! Fuzzing in CI form: seeded random mutations of real manifests, random
//! strings for the unit parsers, and hostile shapes (deep nesting, invalid
//! UTF-8). Decoding and validation must never panic; they return errors.
//! Deterministic seeds, so a failure reproduces; a found crash input belongs
//! in `regressions()` below, or as a file under `tests/fuzz/regressions/`.
//!
//! The cargo-fuzz targets (`make fuzz`, tests/fuzz/) share their bodies with
//! this file (`targets`): `fuzz_corpus_and_regressions_replay` runs every
//! checked-in seed and crash input through them on stable.

mod common;
mod envoy_fixtures;
#[path = "fuzz/targets.rs"]
mod targets;

use k8s4r::api::{self, Duration, Quantity};
use std::panic::catch_unwind;
use std::path::Path;

/// xorshift64*: tiny, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[&str] = &[
    "",
    "0",
    "-1",
    "70000",
    "1e400",
    "null",
    "~",
    "[]",
    "{}",
    "\"",
    "'",
    ":",
    "- ",
    "\t",
    "\n",
    "..",
    "../",
    "/",
    "&a",
    "*a",
    "!!binary",
    "!!str",
    "${X}",
    "sha256:",
    "spiffe://",
    "5s",
    "1m30s",
    "128Mi",
    "100m",
    "\u{0}",
    "é",
];

fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(4) {
            0 => {
                bytes.remove(at);
            }
            1 => bytes.insert(at, (rng.next() & 0x7f) as u8),
            2 => {
                let word = INTERESTING[rng.below(INTERESTING.len())].as_bytes();
                bytes.splice(at..at, word.iter().copied());
            }
            _ => {
                // Duplicate a slice: repeats keys, list items and indentation.
                let end = (at + rng.below(40)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                bytes.splice(at..at, chunk);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn decode_and_validate(text: &str) -> usize {
    let mut ok = 0;
    for d in api::decode_all(text).into_iter().flatten() {
        let _ = api::validate(&d.object);
        let _ = serde_json::to_string(&d.object).unwrap();
        ok += 1;
    }
    ok
}

fn seeds() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut out: Vec<String> = [dir.clone(), dir.join("extra")]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    out.sort();
    out
}

#[test]
fn mutated_manifests_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut runs, mut decoded) = (0, 0);
    for round in 0..3000 {
        let seed = &seeds[round % seeds.len()];
        let text = mutate(&mut rng, seed);
        match catch_unwind(|| decode_and_validate(&text)) {
            Ok(n) => decoded += n,
            Err(_) => panic!("decode/validate panicked on input:\n{text}"),
        }
        runs += 1;
    }
    // Most single mutations still decode: proves the fuzzer reaches validation.
    assert!(decoded > runs / 4, "only {decoded} of {runs} mutated documents decoded");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 100_000;
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(api::decode_all(&json).iter().all(|d| d.is_err()));
    let yaml = format!("spec: {}1{}", "[".repeat(depth), "]".repeat(depth));
    assert!(api::decode_all(&yaml).iter().all(|d| d.is_err()));
    let yaml_blocks: String = (0..5000).map(|i| format!("{}- \n", " ".repeat(i % 200))).collect();
    let _ = api::decode_all(&yaml_blocks);
}

#[test]
fn invalid_utf8_is_replaced_not_trusted() {
    let mut bytes = seeds()[0].clone().into_bytes();
    bytes.splice(10..10, [0xff, 0xfe, 0xc3]);
    let text = String::from_utf8_lossy(&bytes);
    let _ = decode_and_validate(&text);
}

#[test]
fn unit_parsers_never_panic() {
    let mut rng = Rng(42);
    let alphabet: Vec<char> = "0123456789.+-eEmunsµhKMGTPi ".chars().collect();
    for _ in 0..20_000 {
        let len = rng.below(12);
        let s: String = (0..len).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let d = Duration::new(&s);
        let q = Quantity::new(&s);
        // A parsed value is always consistent with its own error state.
        assert_eq!(d.get().is_some(), d.error().is_none(), "{s:?}");
        assert_eq!(q.milli().is_some(), q.error().is_none(), "{s:?}");
    }
}

#[test]
fn durations_round_trip_through_their_parts() {
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let (h, m, s, ms) = (rng.below(100), rng.below(60), rng.below(60), rng.below(1000));
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let want = std::time::Duration::from_millis((((h * 60 + m) * 60 + s) * 1000 + ms) as u64);
        assert_eq!(Duration::parse(&text), Ok(want), "{text}");
    }
}

/// Inputs that once broke something. Keep them forever.
#[test]
fn regressions() {
    for text in [
        "apiVersion: robot.k8s4r.io/v1alpha1\nkind: Job\nspec: {taskGroups: [{count: 99999999999}]}",
        "--- !!binary x",
        "- - - - -",
    ] {
        let _ = decode_and_validate(text);
    }
}

/// Every file under tests/fuzz/corpus/<target>/ and
/// tests/fuzz/regressions/<target>/ through that target's body, as
/// `make fuzz` runs it. A crash input the fuzzer found stays here forever.
#[test]
fn fuzz_corpus_and_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut replayed = 0;
    for (name, body) in targets::TARGETS {
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                continue;
            };
            let mut files: Vec<_> = dir.map(|e| e.unwrap().path()).collect();
            files.sort();
            for file in files {
                let data = std::fs::read(&file).unwrap();
                if catch_unwind(|| body(&data)).is_err() {
                    panic!("fuzz target {name} fails on {}", file.display());
                }
                replayed += 1;
            }
        }
    }
    assert!(
        replayed >= targets::TARGETS.len(),
        "only {replayed} inputs under {}",
        root.display()
    );
}

/// The `execute` target in CI form: seeded generated Jobs (their durations
/// from ordinary to past any clock) and the examples run through the
/// agent's reconcile and lifecycle machines on the fake host (fake clock,
/// fake process table), each under a seeded script of exits, spawn
/// failures, agent restarts, withdrawals and jumps of time. No panic, and
/// the generator reaches what it is for: valid Jobs and Jobs valid but for
/// their durations both run, processes start and end.
#[test]
fn generated_jobs_execute_under_reconcile_and_the_machines() {
    let mut rng = Rng(0x0DDB_A11E_5EED_0001);
    let mut totals = targets::Executed::default();
    let (mut valid, mut bypassed) = (0, 0);
    let run = |bytes: &[u8], totals: &mut targets::Executed| {
        let r = catch_unwind(|| targets::execute_case(bytes))
            .unwrap_or_else(|_| panic!("execute fails on input {bytes:?}"));
        totals.spawns += r.spawns;
        totals.exits += r.exits;
        (r.ran, r.bypassed)
    };
    for _ in 0..400 {
        let len = 48 + rng.below(160);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        bytes[0] |= 1;
        match run(&bytes, &mut totals) {
            (true, false) => valid += 1,
            (true, true) => bypassed += 1,
            _ => {}
        }
    }
    let mut examples = 0;
    for seed in seeds() {
        let mut bytes = vec![0];
        bytes.extend_from_slice(seed.as_bytes());
        bytes.push(0);
        bytes.extend((0..64).map(|_| rng.next() as u8));
        examples += usize::from(run(&bytes, &mut totals).0);
    }
    assert!(examples >= 5, "only {examples} examples ran");
    assert!(valid > 100, "only {valid} valid generated jobs ran");
    assert!(bypassed > 40, "only {bypassed} jobs past the duration limit ran");
    assert!(totals.spawns > 1500 && totals.exits > 1000, "{totals:?}");
}

/// The Envoy renderer in CI form: seeded random networks (the fuzz target's
/// generator, fed by a seeded RNG) are planned, rendered and checked for
/// structure; valid ones must plan. A sample of the rendered configs also
/// passes the real `envoy --mode validate`.
#[test]
fn random_networks_render_to_sound_envoy_configs() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let (mut rendered, mut valid) = (0, 0);
    let mut sample: Vec<(bool, String)> = Vec::new();
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
        let job = targets::generate_job(&mut targets::Source::new(&bytes));
        let Ok(d) = api::decode::decode_value(job) else {
            continue;
        };
        let configs = targets::render_object(&d.object);
        if api::validate(&d.object).is_empty() {
            valid += 1;
            // For the real Envoy: the first config with an inbound listener
            // and the first without; neither with tlsFiles, whose paths it
            // opens (envoy_validate.rs covers those with real certificates).
            for c in configs.iter().filter(|c| !c.contains(r#""filename""#)) {
                let inbound = c.contains(r#""name": "in-"#);
                if !sample.iter().any(|(i, _)| *i == inbound) {
                    sample.push((inbound, c.clone()));
                }
            }
        }
        rendered += configs.len();
    }
    // The generator reaches the renderer, and with valid manifests too.
    assert!(rendered > 80, "only {rendered} configs rendered");
    assert!(valid > 80, "only {valid} valid jobs generated");
    assert_eq!(sample.len(), 2, "no sample with and without inbound listeners");

    let Some(envoy) = envoy_fixtures::envoy_or_skip("random_networks_render_to_sound_envoy_configs") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (i, (_, text)) in sample.iter().enumerate() {
        let file = tmp.path().join(format!("sample-{i}.json"));
        std::fs::write(&file, text).unwrap();
        if let Err(e) = envoy_fixtures::validate(&envoy, &file) {
            panic!("{e}\n{text}");
        }
    }
}
