//! The benchmark tool, end to end, in `--quick` mode: it starts its own slapd and valkey-server,
//! must get every answer right (exit 0), print every line (1-7) and every ratio, and finish well
//! within a minute. The figures themselves are not checked: `--quick` on a shared machine says
//! nothing about performance.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn bench_quick_runs_every_line_and_prints_the_ratios() {
    let exe = env!("CARGO_BIN_EXE_valkeyauth-bench");
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("--quick")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start valkeyauth-bench");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // A hang must fail the test, not CI: SIGKILL the tool after the limit (its servers die with
    // it through PR_SET_PDEATHSIG).
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for valkeyauth-bench") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");

    let status = status.unwrap_or_else(|| panic!("still running after {LIMIT:?}\n{context}"));
    assert!(status.success(), "exit status {status}\n{context}");
    assert!(elapsed < LIMIT, "took {elapsed:?}\n{context}");

    // Every line of the table, measured (a rate and answers, no wrong one).
    for id in ["1", "2", "3", "4", "4L", "5", "6", "6n", "6a", "6b", "7"] {
        let tag = format!("[{id:<3}]");
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&tag))
            .unwrap_or_else(|| panic!("no line {tag}\n{context}"));
        let numbers: Vec<&str> = row.split_whitespace().rev().take(2).collect();
        let (wrong, answers) = (numbers[0], numbers[1]);
        assert_eq!(wrong, "0", "wrong answers on {row}\n{context}");
        assert!(
            answers.parse::<u64>().is_ok_and(|n| n > 0),
            "no answers on {row}\n{context}"
        );
    }
    assert!(
        stdout.contains("[7  ] memory and handles after 5000 mixed AUTHs: RSS "),
        "no memory line\n{context}"
    );

    // Every ratio with a value and a verdict.
    assert!(stdout.contains("\nratios:\n"), "no ratios\n{context}");
    for id in [
        "3 ÷ 1", "4 ÷ 4L", "5 ÷ 2", "6a ÷ 6", "6b ÷ 6", "7 RSS", "7 fds",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(id) && (l.ends_with("PASS") || l.ends_with("MISS")))
            .unwrap_or_else(|| panic!("no ratio {id} with PASS/MISS\n{context}"));
        assert!(
            !row.contains("n/a"),
            "ratio without a value: {row}\n{context}"
        );
    }
    assert!(
        stdout.contains("result: every answer was right"),
        "{context}"
    );
}
