//! Smoke test of the side-by-side benchmark harness (`bench/run`): one tiny
//! scenario, two short rounds, against the debug binary. It checks that the
//! harness runs end to end and writes its JSON, not how fast anything is —
//! numbers belong in the benchmark output, not in assertions.
//!
//! haproxy, wrk and nginx must be installed (`bash scripts/setup.sh`, which CI
//! runs); a missing tool fails the test with that message instead of skipping.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const LIMIT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

#[test]
fn bench_harness_smoke() {
    let missing: Vec<&str> = ["python3", "haproxy", "wrk", "nginx", "taskset"]
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "the benchmark smoke test needs {missing:?}: run `bash scripts/setup.sh` \
         (installs haproxy, wrk, nginx-light)"
    );

    let out = std::env::temp_dir().join(format!("portcullis-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let root = repo_root();
    let mut child = Command::new("python3")
        .arg(root.join("bench/run"))
        .args(["--smoke", "--no-setup", "--bin", BIN, "--out"])
        .arg(&out)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 bench/run");

    // Drain the pipes on threads so the harness never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bench/run") {
            break Some(status);
        }
        if start.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = match status {
        Some(s) => s,
        None => {
            // SIGTERM lets the harness stop what it started; SIGKILL if it does not exit.
            let pid = i32::try_from(child.id()).expect("pid fits in i32");
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let grace = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && grace.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/run --smoke did not finish within {LIMIT:?}\nstdout:\n{}\nstderr:\n{}",
                out_reader.join().unwrap_or_default(),
                err_reader.join().unwrap_or_default()
            );
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(
        status.success(),
        "bench/run --smoke failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let json_path = out.join("results.json");
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("{}: {e}\nstdout:\n{stdout}", json_path.display()));
    let results: Value = serde_json::from_str(&text).expect("results.json is JSON");
    let scenarios = results["scenarios"].as_array().expect("scenarios array");
    assert!(!scenarios.is_empty(), "no scenario in {text}");
    for scenario in scenarios {
        let name = scenario["name"].as_str().unwrap_or("?");
        let rounds = scenario["rounds"].as_array().expect("rounds array");
        assert!(!rounds.is_empty(), "{name}: no rounds");
        for proxy in ["portcullis", "haproxy"] {
            for round in rounds {
                let turn = &round[proxy];
                let rps = turn["rps"].as_f64().unwrap_or(0.0);
                assert!(rps > 0.0, "{name}/{proxy}: rps {rps} in {turn}");
                assert!(
                    turn["cpu_us_per_req"].as_f64().is_some() && turn["cpu_s"].as_f64().is_some(),
                    "{name}/{proxy}: CPU numbers missing in {turn}"
                );
                assert_eq!(
                    turn["errors"]["status"].as_u64(),
                    Some(0),
                    "{name}/{proxy}: non-2xx answers in {turn}"
                );
            }
            let summary = &scenario["summary"][proxy];
            assert!(
                summary["rps"].as_f64().is_some_and(|r| r > 0.0),
                "{name}/{proxy}: {summary}"
            );
            assert!(
                summary["cpu_us_per_req"].as_f64().is_some(),
                "{name}/{proxy}: {summary}"
            );
        }
        assert!(
            scenario["summary"]["ratio"]["rps"]["median"]
                .as_f64()
                .is_some(),
            "{name}: no ratio"
        );
    }
    let md = std::fs::read_to_string(out.join("results.md")).expect("results.md");
    assert!(
        md.contains("| scenario |"),
        "results.md has no table:\n{md}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// Every scenario's generated configs pass `portcullis check` and `haproxy -c`
/// (two scenarios once declared plugins of the same name, which only the full
/// run found), and with `--baseline` the baseline binary checks its copy too.
#[test]
fn every_scenario_config_passes_both_checks() {
    let root = repo_root();
    let check = |tag: &str, extra: &[&str]| -> String {
        let out = std::env::temp_dir().join(format!(
            "portcullis-bench-configs-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        let result = Command::new("python3")
            .arg(root.join("bench/run"))
            .args(["--check-configs", "--no-setup", "--bin", BIN])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .current_dir(&root)
            .stdin(Stdio::null())
            .output()
            .expect("spawn python3 bench/run");
        // One config per access-log mode (`--logs both`, the default), or
        // the plain name with one mode.
        let wrote_baseline = [
            "portcullis-baseline.toml",
            "portcullis-baseline-logs-off.toml",
        ]
        .iter()
        .any(|f| out.join("configs").join(f).is_file());
        let _ = std::fs::remove_dir_all(&out);
        assert!(
            result.status.success(),
            "bench/run --check-configs {extra:?} failed:\n{}{}",
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        assert_eq!(
            wrote_baseline,
            !extra.is_empty(),
            "baseline config written?"
        );
        String::from_utf8_lossy(&result.stdout).into_owned()
    };
    let said = check("plain", &[]);
    assert!(
        said.contains("wasm-noop") && said.contains("lua-noop") && said.contains("both checks"),
        "{said}"
    );
    let said = check("baseline", &["--baseline", BIN]);
    assert!(
        said.contains("wasm-noop") && said.contains("all three checks"),
        "{said}"
    );
}
