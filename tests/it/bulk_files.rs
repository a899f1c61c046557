//! Issue 10, kind 1: a bulk file is decoded line by line (BOM, CRLF, GBK, broken JSON),
//! and whatever stops `submit` (the gateway going away, a signal, a read error), the
//! report holds every answered line and the summary names exactly the rest, so that a
//! resend is safe and complete. Real gateway, real `submit` process, real files and
//! FIFOs.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use oip_gateway::submit;

use crate::common::*;

/// 张三 encoded in GBK, as a Chinese spreadsheet tool writes it.
const GBK_NAME: &[u8] = b"\xD5\xC5\xC8\xFD";

fn gbk_worker_line(id: &str) -> Vec<u8> {
    let utf8 = worker_line(id);
    let (head, tail) = utf8.split_once("张三丰").expect("name in the line");
    [head.as_bytes(), GBK_NAME, tail.as_bytes()].concat()
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write input");
}

fn lines_of(lines: &[Vec<u8>], bom: bool, crlf: bool) -> Vec<u8> {
    let mut out = if bom {
        b"\xEF\xBB\xBF".to_vec()
    } else {
        vec![]
    };
    for l in lines {
        out.extend_from_slice(l);
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bom_crlf_and_a_gbk_line_are_decoded_line_by_line_at_any_batch_size() {
    let input = lines_of(
        &[
            worker_line("W1").into_bytes(),
            worker_line("W2").into_bytes(),
            gbk_worker_line("W3"),
            worker_line("W4").into_bytes(),
            b"{\"kind\":\"worker\",\"worker_id\":\"W5\",".to_vec(),
            worker_line("W6").into_bytes(),
        ],
        true,
        true,
    );
    let mut reports = vec![];
    for batch in ["1", "1000"] {
        let gw = TestGateway::spawn().await;
        let file = gw.dir.path().join("in.jsonl");
        write_file(&file, &input);
        let report = gw.dir.path().join("report.jsonl");
        let out = run_submit(&gw.endpoint(), &file, &report, &["--batch-size", batch]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("1 line is not UTF-8") && err.contains("iconv -f GB18030"),
            "{err}"
        );
        assert!(
            !err.contains("never reached the gateway"),
            "a report was kept: {err}"
        );
        let got = report_brief(&report);
        let ok = |line: u64, id: &str| {
            (
                line,
                id.to_string(),
                "ACCEPTED".to_string(),
                String::new(),
                String::new(),
            )
        };
        assert_eq!(got[0], ok(1, "W1"), "the BOM is not part of line 1");
        assert_eq!(got[1], ok(2, "W2"));
        assert_eq!(
            got[2],
            (
                3,
                "W3".into(),
                "REJECTED".into(),
                "MALFORMED_RECORD".into(),
                "name".into()
            )
        );
        let lines = report_lines(&report);
        let message = lines[2]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("not valid UTF-8") && message.contains("GBK"),
            "{message}"
        );
        assert_eq!(got[3], ok(4, "W4"));
        assert_eq!(
            (got[4].0, got[4].2.as_str(), got[4].3.as_str()),
            (5, "REJECTED", "MALFORMED_RECORD")
        );
        let message = lines[4]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("line is not valid JSON"), "{message}");
        assert_eq!(got[5], ok(6, "W6"));
        let mut c = gw.client("platform-a").await;
        let stored = c
            .list_workers(oip_gateway::proto::ListRequest::default())
            .await
            .expect("list")
            .into_inner()
            .workers
            .len();
        assert_eq!(stored, 4);
        reports.push(std::fs::read(&report).expect("report"));
    }
    assert_eq!(
        reports[0], reports[1],
        "the same report at batch sizes 1 and 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_after_1200_good_ones_loses_none_of_them() {
    let gw = TestGateway::spawn().await;
    let mut lines: Vec<Vec<u8>> = (0..1200)
        .map(|i| worker_line(&format!("W{i:04}")).into_bytes())
        .collect();
    lines.push(gbk_worker_line("WBAD"));
    lines.extend((0..5).map(|i| worker_line(&format!("X{i}")).into_bytes()));
    let file = gw.dir.path().join("in.jsonl");
    write_file(&file, &lines_of(&lines, false, false));
    let report = gw.dir.path().join("report.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = report_brief(&report);
    assert_eq!(got.len(), 1206);
    for (i, l) in got.iter().enumerate() {
        assert_eq!(l.0, i as u64 + 1);
        let want = if i == 1200 { "REJECTED" } else { "ACCEPTED" };
        assert_eq!(l.2, want, "line {}", l.0);
    }
    let again = run_submit(&gw.endpoint(), &file, &report, &["--batch-size", "1"]);
    assert!(again.status.success());
    let dup = report_brief(&report)
        .iter()
        .filter(|l| l.2 == "DUPLICATE")
        .count();
    assert_eq!(dup, 1205, "every good line was applied the first time");
}

/// A FIFO the test writes to while `submit` reads it.
fn fifo(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("in.fifo");
    let ok = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo")
        .success();
    assert!(ok, "mkfifo");
    path
}

/// Waits until the report (written as `<report>.partial` while the run lasts) has `n`
/// lines.
fn await_report(report: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut partial = report.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    loop {
        let have = std::fs::read_to_string(&partial)
            .or_else(|_| std::fs::read_to_string(report))
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "report has {have} of {n} lines");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        assert!(Instant::now() < deadline, "submit did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
    }
    s
}

/// The line `--from-line` should resume from, as the summary says.
fn resume_line(stderr: &str) -> usize {
    stderr
        .split("--from-line ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --from-line in {stderr}"))
}

fn numbered_orders(from: usize, to: usize) -> Vec<Vec<u8>> {
    (from..=to)
        .map(|i| order_line(&format!("O{i:04}"), "W1").into_bytes())
        .collect()
}

#[test]
fn the_gateway_going_away_mid_file_loses_no_answer_and_the_rest_resends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gw = GatewayProcess::spawn(dir.path(), &[]);
    let endpoint = format!("https://{}", gw.addr);
    let input = fifo(dir.path());
    let report = dir.path().join("r1.jsonl");
    let mut child = submit_command(&endpoint, &input, &report, &["--batch-size", "100"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn submit");
    let mut all = vec![worker_line("W1").into_bytes()];
    all.extend(numbered_orders(2, 600));
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .expect("open fifo");
    writer
        .write_all(&lines_of(&all[..300], false, false))
        .expect("first 300 lines");
    writer.flush().expect("flush");
    await_report(&report, 300);

    gw.kill();
    // The rest of the file arrives after the gateway is gone.
    let _ = writer.write_all(&lines_of(&all[300..], false, false));
    drop(writer);
    let status = wait_exit(&mut child);
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(3), "incomplete: {stderr}");
    assert!(stderr.contains("incomplete:"), "{stderr}");
    let answered = report_brief(&report);
    assert_eq!(answered.len(), 300, "every answered line is in the report");
    assert!(
        answered
            .iter()
            .enumerate()
            .all(|(i, l)| l.0 == i as u64 + 1)
    );
    assert!(answered.iter().all(|l| l.2 == "ACCEPTED"));
    let from = resume_line(&stderr);
    assert_eq!(from, 301, "{stderr}");

    // A new gateway on the same database: the tail resends, then the whole file is
    // all duplicates (nothing was lost, nothing applied twice).
    let gw = GatewayProcess::spawn(dir.path(), &[]);
    let endpoint = format!("https://{}", gw.addr);
    let file = dir.path().join("all.jsonl");
    write_file(&file, &lines_of(&all, false, false));
    let r2 = dir.path().join("r2.jsonl");
    let out = run_submit(&endpoint, &file, &r2, &["--from-line", &from.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tail = report_brief(&r2);
    assert_eq!(tail.len(), 300);
    assert_eq!(tail[0].0, 301);
    assert!(tail.iter().all(|l| l.2 == "ACCEPTED"), "{tail:?}");
    let r3 = dir.path().join("r3.jsonl");
    let out = run_submit(&endpoint, &file, &r3, &[]);
    assert!(out.status.success());
    let whole = report_brief(&r3);
    assert_eq!(whole.len(), 600);
    assert!(whole.iter().all(|l| l.2 == "DUPLICATE"));
}

/// Feeds `lines` lines to `submit` through a FIFO that stays open, waits for their
/// answers, sends `signal`, and returns the exit status, stderr and report lines.
fn stopped_by(signal: &str, lines: usize, batch: &str) -> (Option<i32>, String, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = GatewayProcess::spawn(dir.path(), &[]);
    let endpoint = format!("https://{}", gw.addr);
    let input = fifo(dir.path());
    let report = dir.path().join("r.jsonl");
    let mut child = submit_command(&endpoint, &input, &report, &["--batch-size", batch])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn submit");
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .expect("open fifo");
    let mut all = vec![worker_line("W1").into_bytes()];
    all.extend(numbered_orders(2, lines));
    writer
        .write_all(&lines_of(&all, false, false))
        .expect("the lines");
    writer.flush().expect("flush");
    await_report(&report, lines);
    // The file stays open (more could come): the signal alone stops the run.
    let sent = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = wait_exit(&mut child);
    let stderr = stderr_of(&mut child);
    drop(writer);
    (status.code(), stderr, report_brief(&report).len())
}

#[test]
fn a_signal_stops_reading_and_keeps_every_answer() {
    let (code, stderr, reported) = stopped_by("-INT", 150, "50");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    assert!(stderr.contains("not read: line 151 to the end"), "{stderr}");
    assert_eq!(resume_line(&stderr), 151);
    assert_eq!(reported, 150);
}

#[test]
fn a_hangup_or_a_terminate_stops_reading_like_an_interrupt() {
    for signal in ["-HUP", "-TERM"] {
        let (code, stderr, reported) = stopped_by(signal, 10, "10");
        assert_eq!(code, Some(3), "{signal}: {stderr}");
        assert!(stderr.contains("not read: line 11 to the end"), "{stderr}");
        assert_eq!(reported, 10);
    }
}

/// Reads `good` bytes, then fails.
struct FailingReader {
    good: std::io::Cursor<Vec<u8>>,
}

impl tokio::io::AsyncRead for FailingReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let pos = self.good.position() as usize;
        let data = self.good.get_ref();
        if pos >= data.len() {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk read error")));
        }
        let n = buf.remaining().min(data.len() - pos).min(4096);
        buf.put_slice(&data[pos..pos + n]);
        self.good.set_position((pos + n) as u64);
        std::task::Poll::Ready(Ok(()))
    }
}

fn options(gw: &TestGateway, report: &Path, batch_size: usize) -> submit::SubmitOptions {
    gw.submit_options(&report.with_extension("in"), report, batch_size)
}

#[tokio::test]
async fn a_read_error_ends_the_run_with_every_line_read_answered() {
    let gw = TestGateway::spawn().await;
    let report = gw.dir.path().join("r.jsonl");
    let mut lines = vec![worker_line("W1").into_bytes()];
    lines.extend(numbered_orders(2, 120));
    let reader = FailingReader {
        good: std::io::Cursor::new(lines_of(&lines, false, false)),
    };
    let summary = submit::run_input(&options(&gw, &report, 50), reader, 0, submit::no_stop())
        .await
        .expect("the run starts");
    assert!(!summary.complete());
    assert_eq!(summary.unread_from, Some(121));
    assert!(summary.unanswered.is_empty(), "{:?}", summary.unanswered);
    let why = summary.stopped.clone().unwrap_or_default();
    assert!(
        why.contains("cannot read line 121") && why.contains("disk read error"),
        "{why}"
    );
    assert_eq!(summary.resume_line(), Some(121));
    let got = report_brief(&report);
    assert_eq!(got.len(), 120);
    assert!(got.iter().all(|l| l.2 == "ACCEPTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_utf16_file_is_refused_before_anything_is_sent() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("utf16.jsonl");
    let mut bytes = vec![0xFF, 0xFE];
    for u in worker_line("W1").encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    write_file(&file, &bytes);
    let report = gw.dir.path().join("r.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("UTF-16") && err.contains("UTF-8"), "{err}");
    // The same kind: files that are not UTF-8 text at all.
    let no_bom: Vec<u8> = worker_line("W1")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let cases: [(&[u8], &str); 4] = [
        (&[0xFF, 0xFE, 0, 0, b'{', 0, 0, 0], "UTF-32"),
        (&[0x1F, 0x8B, 8, 0], "gzip"),
        (b"PK\x03\x04rest", "ZIP"),
        (&no_bom, "NUL bytes"),
    ];
    for (bytes, says) in cases {
        write_file(&file, bytes);
        let out = run_submit(&gw.endpoint(), &file, &report, &[]);
        assert_eq!(out.status.code(), Some(1), "{says}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && err.contains("nothing was sent"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_is_refused_without_stopping_the_file() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    let huge = format!(
        r#"{{"kind":"worker","worker_id":"W2","name":"{}"}}"#,
        "x".repeat(submit::MAX_LINE_BYTES + 10)
    );
    write_file(
        &file,
        &lines_of(
            &[
                worker_line("W1").into_bytes(),
                huge.into_bytes(),
                worker_line("W3").into_bytes(),
            ],
            false,
            false,
        ),
    );
    let report = gw.dir.path().join("r.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = report_brief(&report);
    assert_eq!(
        got.iter().map(|l| l.2.as_str()).collect::<Vec<_>>(),
        ["ACCEPTED", "REJECTED", "ACCEPTED"]
    );
    assert_eq!(got[1].3, "MALFORMED_RECORD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_never_overwrites_the_input_and_an_unwritable_one_stops_before_sending() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    let input = lines_of(
        &[
            worker_line("W1").into_bytes(),
            worker_line("W2").into_bytes(),
        ],
        false,
        false,
    );
    write_file(&file, &input);
    // The same file, by another name.
    let alias = gw.dir.path().join("sub/../in.jsonl");
    std::fs::create_dir(gw.dir.path().join("sub")).expect("dir");
    let out = run_submit(&gw.endpoint(), &file, &alias, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the input file"), "{err}");
    assert_eq!(
        std::fs::read(&file).expect("input"),
        input,
        "the input is intact"
    );

    let nowhere = gw.dir.path().join("no-such-dir/report.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &nowhere, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write report") && err.contains("nothing was sent"),
        "{err}"
    );
    let mut a = gw.client("platform-a").await;
    let stored = a
        .list_workers(oip_gateway::proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .workers;
    assert!(stored.is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_fails_mid_run_names_every_line_it_left_out() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    let lines: Vec<Vec<u8>> = (0..300)
        .map(|i| worker_line(&format!("W{i:03}")).into_bytes())
        .collect();
    write_file(&file, &lines_of(&lines, false, false));
    // A device that is always full: every write fails.
    let out = run_submit(
        &gw.endpoint(),
        &file,
        Path::new("/dev/full"),
        &["--batch-size", "100"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot write the report"), "{err}");
    assert!(err.contains("not in the report"), "{err}");
    let from = resume_line(&err);
    assert_eq!(from, 1, "nothing is in the report: {err}");
    // What was answered was applied: a resend answers DUPLICATE for it.
    let report = gw.dir.path().join("r.jsonl");
    let again = run_submit(&gw.endpoint(), &file, &report, &["--from-line", "1"]);
    assert!(again.status.success());
    let dups = report_brief(&report)
        .iter()
        .filter(|l| l.2 == "DUPLICATE")
        .count();
    assert!(dups >= 100, "{dups} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_standard_output_does_not_fail_a_complete_run() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    write_file(
        &file,
        &lines_of(&[worker_line("W1").into_bytes()], false, false),
    );
    let report = gw.dir.path().join("r.jsonl");
    let mut child = submit_command(&gw.endpoint(), &file, &report, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(report_brief(&report).len(), 1);
}

#[test]
fn a_pipe_is_sniffed_however_its_first_bytes_arrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = GatewayProcess::spawn(dir.path(), &[]);
    let endpoint = format!("https://{}", gw.addr);
    let input = fifo(dir.path());
    let report = dir.path().join("r.jsonl");
    let mut child = submit_command(&endpoint, &input, &report, &[])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn submit");
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .expect("open fifo");
    let mut utf16 = vec![0xFF, 0xFE];
    for u in worker_line("W1").encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    // One byte, a pause, then the rest.
    writer.write_all(&utf16[..1]).expect("one byte");
    writer.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(300));
    writer.write_all(&utf16[1..]).expect("the rest");
    drop(writer);
    let status = wait_exit(&mut child);
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UTF-16"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_from_line_past_the_end_or_zero_is_refused() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    write_file(
        &file,
        &lines_of(&[worker_line("W1").into_bytes()], false, false),
    );
    let report = gw.dir.path().join("r.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &["--from-line", "100"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("past the end of the input (1 line)"), "{err}");
    let out = run_submit(&gw.endpoint(), &file, &report, &["--from-line", "0"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_report_survives_a_run_that_answers_nothing() {
    let gw = TestGateway::spawn().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("in.jsonl");
    write_file(
        &file,
        &lines_of(&[worker_line("W1").into_bytes()], false, false),
    );
    let report = dir.path().join("r.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &[]);
    assert!(out.status.success());
    let before = std::fs::read(&report).expect("report");
    // The gateway is gone: nothing is answered, and the report stays as it was.
    let endpoint = gw.endpoint();
    gw.stop().await;
    let out = run_submit(&endpoint, &file, &report, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&report).expect("report"), before);
    let mut partial = report.as_os_str().to_owned();
    partial.push(".partial");
    assert!(
        !std::path::Path::new(&partial).exists(),
        "no partial file left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_size_above_the_gateways_limit_is_adapted_to_it() {
    let gw = TestGateway::spawn_with(|c| c.limits.max_batch_records = 50).await;
    let file = gw.dir.path().join("in.jsonl");
    let lines: Vec<Vec<u8>> = (0..120)
        .map(|i| worker_line(&format!("W{i:03}")).into_bytes())
        .collect();
    write_file(&file, &lines_of(&lines, false, false));
    let report = gw.dir.path().join("r.jsonl");
    let out = run_submit(&gw.endpoint(), &file, &report, &["--batch-size", "1000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("above the gateway's limit of 50"), "{err}");
    assert_eq!(report_brief(&report).len(), 120);
}

/// Without --report, lines refused here would be kept nowhere: the summary says so,
/// and what to do. Nonsense chunk settings are refused before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_refused_here_without_a_report_are_announced_and_zero_settings_refused() {
    let gw = TestGateway::spawn().await;
    let file = gw.dir.path().join("in.jsonl");
    write_file(
        &file,
        &lines_of(
            &[
                worker_line("W1").into_bytes(),
                b"{\"kind\":\"invoice\"}".to_vec(),
            ],
            false,
            false,
        ),
    );
    let submit = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .arg("submit")
            .arg(&file)
            .args(["--quiet", "--endpoint", &gw.endpoint()])
            .args(args)
            .output()
            .expect("run submit")
    };
    let out = submit(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("1 line was refused here and never reached the gateway")
            && err.contains("--report FILE"),
        "{err}"
    );
    for args in [
        ["--batch-size", "0"],
        ["--window", "0"],
        ["--batch-size", "100001"],
    ] {
        let out = submit(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(args[0]) && err.contains("not in"),
            "{args:?}: {err}"
        );
    }
}
