//! The README is a tested artefact: every command of every ` ```sh ` block runs, in
//! order, against a gateway started by the README's own first command, in a fresh copy
//! of the repository's files (configuration, example certificates and files, reference
//! data), and must succeed; where a block is followed by a plain ` ``` ` block of
//! output, the block's last command must print exactly that (times and rates aside).
//!
//! Conventions the README keeps: ` ```sh ` blocks hold commands exactly as a user types
//! them (`cargo run --release -- …` or `oip-gateway …`, the installed binary); ` ```text `
//! blocks hold templates with placeholders, which are not run; ` ```bash ` blocks hold
//! recipes of several processes at once (replicas behind HAProxy, run in the
//! background), which this test cannot run line by line: the replica tests
//! (`tests/it/replicas.rs`) run the same setup as real processes. `cargo test` and
//! `cargo bench` lines are not run here (the suite is what runs this; benchmarks run
//! for minutes). The well-known ports 50051 (gateway), 50052 (operations) and 50061
//! (simulator) become free
//! ones, so that the test can run beside others.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A command of the README and the output it shows (for the last of its block).
#[derive(Debug, Clone)]
struct Step {
    line: usize,
    args: Vec<String>,
    env: Vec<(String, String)>,
    shows: Option<String>,
}

/// The commands of the README's ` ```sh ` blocks, in order.
fn steps(readme: &str) -> Vec<Step> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end].trim() != "```" {
            end += 1;
        }
        let mut block = Vec::new();
        let mut pending = String::new();
        for (n, raw) in lines[start..end].iter().enumerate() {
            let text = strip_comment(raw);
            if text.trim().is_empty() && pending.is_empty() {
                continue;
            }
            if let Some(head) = text.trim_end().strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(text);
            for command in pending.split("&&") {
                if let Some(step) = step_of(command, start + n + 1) {
                    block.push(step);
                }
            }
            pending.clear();
        }
        // An output block right after (a plain fence) belongs to the block's last
        // command.
        let mut after = end + 1;
        while after < lines.len() && lines[after].trim().is_empty() {
            after += 1;
        }
        if after < lines.len() && lines[after].trim() == "```" {
            let mut close = after + 1;
            while close < lines.len() && lines[close].trim() != "```" {
                close += 1;
            }
            if let Some(last) = block.last_mut() {
                last.shows = Some(lines[after + 1..close].join("\n"));
            }
        }
        steps.extend(block);
        i = end + 1;
    }
    steps
}

/// A line without its trailing `# comment` (a `#` after white space).
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The binary's arguments of a README command, or None for a command this test does not
/// run (`cargo test`, `cargo bench`).
fn step_of(command: &str, line: usize) -> Option<Step> {
    let mut words = shell_words(command);
    let mut env = Vec::new();
    while words
        .first()
        .is_some_and(|w| w.contains('=') && !w.starts_with('-'))
    {
        let w = words.remove(0);
        let (k, v) = w.split_once('=').unwrap_or_default();
        env.push((k.to_string(), v.to_string()));
    }
    let args: Vec<String> = match words.as_slice() {
        [] => return None,
        [cargo, sub, ..] if cargo == "cargo" && (sub == "test" || sub == "bench") => return None,
        [cargo, run, rest @ ..] if cargo == "cargo" && run == "run" => {
            let at = rest.iter().position(|w| w == "--")?;
            rest[at + 1..].to_vec()
        }
        [bin, rest @ ..] if bin == "oip-gateway" => rest.to_vec(),
        other => panic!("README line {line}: not a command this test knows: {other:?}"),
    };
    Some(Step {
        line,
        args,
        env,
        shows: None,
    })
}

/// Splits a command line as a shell would, for the quoting the README uses.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// Outputs compared without what varies from run to run: durations and rates.
fn normalized(text: &str) -> String {
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    let w = w.trim_matches(|c| c == '(' || c == ')');
                    if w.trim_end_matches('s')
                        .parse::<f64>()
                        .is_ok_and(|_| w.ends_with('s') && w.contains('.'))
                    {
                        "<time>".to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .map(|l| match l.split_once(" records in ") {
            Some((head, _)) => format!("{head} records in <time>"),
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fresh copy of what a new user has after cloning: configuration, certificates,
/// example files and reference data.
fn fresh_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["config", "certs-example", "examples", "reference"] {
        copy_dir(&repo.join(sub), &dir.path().join(sub));
    }
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A long-running command (`serve`, `backend-sim serve`), stopped at the end.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_readme_command_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let steps = steps(&readme);
    assert!(steps.len() >= 20, "{} commands found", steps.len());
    let home = fresh_copy();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_oip-gateway"));
    let (gateway_port, sim_port, ops_port) = (free_port(), free_port(), free_port());
    let ports = |s: &str| {
        s.replace("127.0.0.1:50051", &format!("127.0.0.1:{gateway_port}"))
            .replace("127.0.0.1:50061", &format!("127.0.0.1:{sim_port}"))
            .replace("127.0.0.1:50052", &format!("127.0.0.1:{ops_port}"))
    };
    let mut background = Vec::new();
    let mut log = Vec::new();
    for step in steps {
        let args: Vec<String> = step.args.iter().map(|a| ports(a)).collect();
        let mut cmd = Command::new(&bin);
        cmd.args(&args)
            .current_dir(home.path())
            .env("OIP_LISTEN", format!("127.0.0.1:{gateway_port}"))
            .env("OIP_OPERATIONS__LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("OIP_ENDPOINT", format!("https://127.0.0.1:{gateway_port}"))
            .env_remove("RUST_LOG")
            .envs(step.env.iter().map(|(k, v)| (k.clone(), ports(v))));
        let long_running = args.first().is_some_and(|a| a == "serve")
            || (args.first().is_some_and(|a| a == "backend-sim")
                && args.get(1).is_some_and(|a| a == "serve"));
        if long_running {
            let mut child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            let stdout = child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    let _ = tx.send(line);
                }
            });
            let ready = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("README line {}: {args:?} did not start", step.line));
            assert!(
                ready.starts_with("listening on"),
                "line {}: {ready}",
                step.line
            );
            log.push(format!("line {}: {} → {ready}", step.line, args.join(" ")));
            background.push(Background(child));
            continue;
        }
        let out = cmd.output().expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "README line {}: `{}` failed ({:?}):\n{stdout}\n{stderr}",
            step.line,
            args.join(" "),
            out.status.code()
        );
        if let Some(shows) = &step.shows {
            assert_eq!(
                normalized(stdout.trim_end()),
                normalized(shows.trim_end()),
                "README line {}: `{}` prints what the README shows",
                step.line,
                args.join(" ")
            );
        }
        log.push(format!(
            "line {}: {} → {}",
            step.line,
            args.join(" "),
            stdout.lines().next().unwrap_or("(no output)")
        ));
    }
    // What each command printed, for the record (visible with --nocapture).
    println!("{}", log.join("\n"));
}

#[test]
fn the_readme_parser_reads_blocks_continuations_and_outputs() {
    let readme = "text\n```sh\ncargo run --release -- serve     # a comment\ncargo test\noip-gateway admin platforms put --uscc X \\\n    --name \"C D\"\nA=1 cargo run -- submit f --quiet && oip-gateway pull contributions --out x\n```\n\n```\nout 1\nout 2\n```\n```text\noip-gateway not <run>\n```\n";
    let s = steps(readme);
    let args: Vec<Vec<String>> = s.iter().map(|s| s.args.clone()).collect();
    assert_eq!(
        args,
        vec![
            vec!["serve".to_string()],
            vec!["admin", "platforms", "put", "--uscc", "X", "--name", "C D"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["submit".to_string(), "f".into(), "--quiet".into()],
            vec!["pull", "contributions", "--out", "x"]
                .into_iter()
                .map(String::from)
                .collect(),
        ]
    );
    assert_eq!(s[2].env, vec![("A".to_string(), "1".to_string())]);
    assert_eq!(s[3].shows.as_deref(), Some("out 1\nout 2"));
    assert_eq!(
        normalized("13 records in 0.0s (287 records/s)"),
        normalized("13 records in 1.5s (9 records/s)")
    );
}
