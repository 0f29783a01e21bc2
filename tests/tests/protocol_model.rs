//! Checks node/model/one_live_room.pml, the Promela model of the placement
//! protocol, with spin: no reachable state has two live rooms of a meeting,
//! or a live room missing an acknowledged publish, or a handoff refused as
//! a conflict.
//!
//! The state space is far too large to enumerate, so the check is a swarm:
//! several depth-first searches with randomised transition orders and
//! bitstate hashing, each for a few seconds, on two sets of bounds (a tight
//! one that reaches deep interleavings quickly, and the model's defaults,
//! with lost messages and publishes in transit). To show the search has
//! teeth, it must also find the violation in mutants of the model that drop
//! one rule each (a claim round that ignores a peer that wins ties, or a
//! node that never yields).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../node/model/one_live_room.pml"
);
const TIGHT: &[&str] = &["-DMAXJOINS=3", "-DMAXPUB=0", "-DMAXREPUSH=0", "-DMAXDROP=0"];

fn work_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roompin-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the model's work dir");
    dir
}

/// Generates and compiles the verifier for `model` with `defines`.
fn build(dir: &Path, model: &str, defines: &[&str]) -> PathBuf {
    std::fs::write(dir.join("model.pml"), model).expect("write the model");
    let spin = Command::new("spin")
        .current_dir(dir)
        .args(defines)
        .args(["-a", "model.pml"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run spin ({e}): install it (scripts/prereqs test does: Debian's `spin`)")
        });
    assert!(
        spin.status.success(),
        "spin -a failed:\n{}{}",
        String::from_utf8_lossy(&spin.stdout),
        String::from_utf8_lossy(&spin.stderr)
    );
    let cc = Command::new("cc")
        .current_dir(dir)
        .args([
            "-w",
            "-O2",
            "-DSAFETY",
            "-DBITSTATE",
            "-DT_RAND",
            "-DP_RAND",
            "-o",
            "pan",
            "pan.c",
        ])
        .output()
        .expect("cannot run cc");
    assert!(
        cc.status.success(),
        "cc pan.c failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    dir.join("pan")
}

/// One search with `seed`, stopped after `secs`. Returns pan's report.
fn search(pan: &Path, seed: u32, secs: u64) -> String {
    let mut child = Command::new(pan)
        .current_dir(pan.parent().unwrap_or(Path::new(".")))
        .args(["-m3000", "-w26", &format!("-RS{seed}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run pan");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Ok(None) = child.try_wait() {
        // pan prints its report when interrupted.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }
    let out = child.wait_with_output().expect("pan's report");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn violated(report: &str) -> bool {
    report.contains("assertion violated") || !report.contains("errors: 0")
}

#[test]
fn the_model_keeps_one_live_room_and_every_acknowledged_publish() {
    let model = std::fs::read_to_string(MODEL).expect("read the model");
    for (name, defines, seeds, secs) in [("tight", TIGHT, 6, 8), ("default", &[][..], 3, 12)] {
        let dir = work_dir(name);
        let pan = build(&dir, &model, defines);
        for seed in 1..=seeds {
            let report = search(&pan, seed, secs);
            let stored = report
                .lines()
                .find(|l| l.contains("states, stored"))
                .unwrap_or("")
                .trim()
                .to_owned();
            println!("[{name} seed {seed}] {stored}");
            assert!(
                !violated(&report),
                "[{name} seed {seed}] the model found a violation:\n{report}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_search_finds_what_a_missing_rule_breaks() {
    let model = std::fs::read_to_string(MODEL).expect("read the model");
    let mutants = [
        (
            "a claim round that ignores a peer that wins ties",
            ":: h == H_ACQ && p < i -> d = 3",
            ":: false -> d = 3",
        ),
        (
            "a node that never yields to a peer that wins ties",
            ":: from < i -> yielded[i] = true :: else -> skip fi;",
            ":: else -> skip fi;",
        ),
    ];
    for (what, rule, broken) in mutants {
        assert!(
            model.contains(rule),
            "the model no longer has the rule {rule:?}"
        );
        let dir = work_dir("mutant");
        let pan = build(&dir, &model.replace(rule, broken), TIGHT);
        let found = (1..=6).any(|seed| violated(&search(&pan, seed, 10)));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(found, "the search did not find the violation of {what}");
        println!("found: {what}");
    }
}
