//! `oip-gateway submit`: sends a JSON Lines bulk file over mTLS in chunks on one
//! `SubmitStream` call (several chunks in flight, applied in file order), writes the
//! outcome report in input order and counts outcomes and codes.
//!
//! The file is read as bytes, line by line: a line that cannot become a record
//! (`bulk`) is answered locally and the rest still goes. Whatever stops a run (the
//! gateway going away, a signal, a read error), the report holds every line that was
//! answered, written as answers arrive, and the summary names exactly the lines that
//! were not (`Summary::unanswered`, `Summary::unread_from`); resending the file, or
//! its tail with `--from-line`, is always safe: records already applied answer
//! DUPLICATE.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost::Message as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::bulk::{self, LineError, ReportLine};
use crate::domain::ErrorCode;
use crate::proto::{self, platform_service_client::PlatformServiceClient};
use crate::tls;

/// Longest line read, in bytes: a record within the field limits takes under 10 KiB,
/// so a longer line is REJECTED (MALFORMED_RECORD) without being held in memory.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Largest chunk sent in one message, in encoded bytes: well under the gateway's
/// default message limit (16 MiB), whatever `--batch-size` says.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Where and how to submit.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub file: PathBuf,
    pub report: Option<PathBuf>,
    pub endpoint: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Server name to verify (the certificate's DNS name).
    pub domain: String,
    /// Records per chunk at most (a chunk is also cut at [`MAX_CHUNK_BYTES`]).
    pub batch_size: usize,
    /// Chunks sent ahead of their answers.
    pub window: usize,
    pub progress: bool,
    /// Compress chunks with gzip (the gateway accepts gzip and identity).
    pub compress: bool,
    /// Skip the lines before this 1-based line number (to resend the tail of a file
    /// after an interrupted run); 1 sends everything.
    pub from_line: usize,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Lines in the report (answered by the gateway, or rejected locally).
    pub records: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub codes: BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// Line ranges (inclusive) that are not in the report: read but not answered (not
    /// sent, or sent without an answer: they may have been applied, and a resend answers
    /// DUPLICATE), or answered but not recorded (the report could not be written).
    pub unanswered: Vec<(usize, usize)>,
    /// When reading stopped before the end of the file: the first line not read.
    pub unread_from: Option<usize>,
    /// Why the run stopped early.
    pub stopped: Option<String>,
    /// Lines refused here, never sent (so the gateway does not list them among its
    /// rejections); of them, lines that are not UTF-8.
    pub local: usize,
    pub not_utf8: usize,
    /// Whether a report file was asked for (it holds the local refusals' reasons).
    pub reported: bool,
    /// Times the gateway asked to back off (over its rate or at capacity), and the
    /// time spent waiting; the chunks concerned were resent.
    pub backoffs: u32,
    pub backed_off: Duration,
}

impl Summary {
    fn add(&mut self, line: &ReportLine) {
        self.records += 1;
        *self.outcomes.entry(line.outcome.clone()).or_default() += 1;
        if !line.code.is_empty() {
            *self.codes.entry(line.code.clone()).or_default() += 1;
        }
        for w in &line.warnings {
            *self.codes.entry(w.clone()).or_default() += 1;
        }
    }

    /// Notes a line that is not in the report (lines come in file order).
    fn unanswered(&mut self, line: usize) {
        match self.unanswered.last_mut() {
            Some((_, end)) if *end + 1 == line => *end = line,
            Some((_, end)) if *end >= line => {}
            _ => self.unanswered.push((line, line)),
        }
    }

    /// Sorts and merges the line ranges not in the report.
    fn normalize(&mut self) {
        self.unanswered.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.unanswered.len());
        for (a, b) in self.unanswered.drain(..) {
            match merged.last_mut() {
                Some((_, end)) if a <= *end + 1 => *end = (*end).max(b),
                _ => merged.push((a, b)),
            }
        }
        self.unanswered = merged;
    }

    /// Lines without an answer.
    pub fn unanswered_count(&self) -> usize {
        self.unanswered.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// True when every line of the file is in the report.
    pub fn complete(&self) -> bool {
        self.unanswered.is_empty() && self.unread_from.is_none() && self.stopped.is_none()
    }

    /// The line to resume from with `--from-line`: the first line without an answer.
    pub fn resume_line(&self) -> Option<usize> {
        self.unanswered
            .first()
            .map(|(a, _)| *a)
            .or(self.unread_from)
    }

    /// Records per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens an mTLS channel to the gateway.
pub async fn connect(opts: &SubmitOptions) -> anyhow::Result<PlatformServiceClient<Channel>> {
    let channel = tls::connect(
        &opts.endpoint,
        &opts.ca,
        &opts.cert,
        &opts.key,
        &opts.domain,
    )
    .await?;
    let mut client = PlatformServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
        .accept_compressed(CompressionEncoding::Gzip);
    if opts.compress {
        client = client.send_compressed(CompressionEncoding::Gzip);
    }
    Ok(client)
}

/// One input line on its way: answered locally, or waiting for the gateway.
enum Entry {
    Local(ReportLine),
    Remote(usize),
}

/// A chunk of consecutive lines, and the file offset where it ends.
struct Chunk {
    entries: Vec<Entry>,
    remote: usize,
    end_offset: u64,
    /// The request that carried the chunk's records (None when it has none), with its
    /// number among the requests: kept until answered, to resend it on a new call
    /// when the gateway asks to back off.
    request: Option<(u64, proto::SubmitRequest)>,
}

impl Chunk {
    fn new() -> Self {
        Self {
            entries: Vec::new(),
            remote: 0,
            end_offset: 0,
            request: None,
        }
    }
}

/// Why reading stopped before the end of the file.
enum ReadStop {
    /// A stop request (signal).
    Signal,
    /// The call ended: nothing more can be sent.
    Halted,
    /// The input could not be read.
    Error(String),
}

/// What the reader sends to the writer, in file order.
enum Read {
    Chunk(Chunk),
    /// Reading stopped before the end, at this line (the first not read).
    Stopped(usize, ReadStop),
}

/// One line read: its bytes (without the line end), or its length when it is longer
/// than `max`.
enum Line {
    Bytes,
    TooLong(usize),
}

/// Reads lines of at most `max` kept bytes. Cancel-safe: a line read in part when the
/// future is dropped is continued by the next call.
struct LineReader<R> {
    reader: R,
    max: usize,
    /// The line so far (at most `max` bytes of it, with its line end).
    buf: Vec<u8>,
    /// Its length so far, kept or not.
    total: usize,
    /// The previous line was returned: clear before reading on.
    done: bool,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            buf: Vec::with_capacity(4096),
            total: 0,
            done: false,
        }
    }

    fn line(&self) -> (Line, usize) {
        if self.total > self.max {
            (Line::TooLong(self.total), self.total)
        } else {
            (Line::Bytes, self.total)
        }
    }

    /// The next line (its bytes in `self.buf`); None at the end of the input.
    async fn next(&mut self) -> std::io::Result<Option<(Line, usize)>> {
        if self.done {
            self.buf.clear();
            self.total = 0;
            self.done = false;
        }
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                self.done = true;
                return Ok((self.total > 0).then_some(self.line()));
            }
            let (take, end) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.total + take <= self.max {
                self.buf.extend_from_slice(&available[..take]);
            }
            self.total += take;
            self.reader.consume(take);
            if end {
                self.done = true;
                return Ok(Some(self.line()));
            }
        }
    }
}

/// How long a partly filled chunk waits for more lines before it is sent (input that
/// arrives slowly, from a pipe, is not held back).
const LINGER: std::time::Duration = std::time::Duration::from_millis(200);

/// Resolves once a stop was requested (never when no request can come any more).
async fn requested(rx: &mut watch::Receiver<u32>) {
    loop {
        if *rx.borrow_and_update() > 0 {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves once the writer halts the reader.
async fn halted(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ReadOptions {
    batch_size: usize,
    max_chunk_bytes: usize,
    from_line: usize,
}

/// What the gateway says a chunk may hold (`SubmitStream` response metadata).
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    max_records: Option<usize>,
    max_bytes: Option<usize>,
}

impl ServerLimits {
    fn of(metadata: &tonic::metadata::MetadataMap) -> Self {
        let read = |name: &str| {
            metadata
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        Self {
            max_records: read(crate::api::platform::MAX_BATCH_RECORDS_HEADER),
            max_bytes: read(crate::api::platform::MAX_MESSAGE_BYTES_HEADER),
        }
    }

    /// `opts` kept within these limits (a chunk at most half the message limit, so
    /// that framing never tips it over).
    fn apply(self, mut opts: ReadOptions) -> ReadOptions {
        if let Some(n) = self.max_records {
            opts.batch_size = opts.batch_size.min(n.max(1));
        }
        if let Some(b) = self.max_bytes {
            opts.max_chunk_bytes = opts.max_chunk_bytes.min((b / 2).max(1024));
        }
        opts
    }
}

/// The reader's ends of the channels.
struct Reader {
    requests: mpsc::Sender<(u64, proto::SubmitRequest)>,
    /// Requests sent so far (their numbers).
    sent: u64,
    chunks: mpsc::UnboundedSender<Read>,
    stop: watch::Receiver<u32>,
    halt: watch::Receiver<bool>,
}

impl Reader {
    /// Hands the chunk's records to the call and its lines to the report writer; false
    /// when the call has ended (the chunk's lines then go unsent).
    async fn send(
        &mut self,
        chunk: &mut Chunk,
        records: &mut Vec<proto::Record>,
        offset: u64,
    ) -> bool {
        let mut done = std::mem::replace(chunk, Chunk::new());
        done.end_offset = offset;
        let records = std::mem::take(records);
        let mut sent = !*self.halt.borrow();
        if sent && !records.is_empty() {
            let request = proto::SubmitRequest { records };
            self.sent += 1;
            done.request = Some((self.sent, request.clone()));
            sent = tokio::select! {
                r = self.requests.send((self.sent, request)) => r.is_ok(),
                () = halted(&mut self.halt) => false,
            };
        }
        let delivered = self.chunks.send(Read::Chunk(done)).is_ok();
        sent && delivered
    }
}

/// Reads the input into chunks: each chunk's records go to the call and its lines to
/// the report writer, until the end, a read error, a stop request or a halt.
async fn read_chunks<R: AsyncRead + Unpin>(
    input: R,
    opts: ReadOptions,
    mut limits: watch::Receiver<Option<ServerLimits>>,
    mut io: Reader,
) -> usize {
    // Chunks are sized by the gateway's limits, which come with the call's headers.
    let opts = loop {
        if let Some(l) = *limits.borrow_and_update() {
            break l.apply(opts);
        }
        if limits.changed().await.is_err() {
            return 0;
        }
    };
    let mut lines = LineReader::new(BufReader::with_capacity(1 << 20, input), MAX_LINE_BYTES);
    let (mut records, mut chunk, mut bytes) = (Vec::new(), Chunk::new(), 0usize);
    let mut number = 0usize;
    let mut offset = 0u64;
    let mut stop = io.stop.clone();
    let mut halt = io.halt.clone();
    let stopped = loop {
        let line = tokio::select! {
            biased;
            () = requested(&mut stop) => break Some(ReadStop::Signal),
            () = halted(&mut halt) => break Some(ReadStop::Halted),
            l = lines.next() => l,
            () = tokio::time::sleep(LINGER), if chunk.remote > 0 => {
                bytes = 0;
                if !io.send(&mut chunk, &mut records, offset).await {
                    break Some(ReadStop::Halted);
                }
                continue;
            }
        };
        let line = match line {
            Ok(Some(l)) => l,
            Ok(None) => break None,
            Err(e) => break Some(ReadStop::Error(e.to_string())),
        };
        number += 1;
        offset += line.1 as u64;
        if number < opts.from_line {
            continue;
        }
        let parsed = match line.0 {
            Line::TooLong(n) => Some(Err(LineError {
                kind: String::new(),
                id: String::new(),
                code: ErrorCode::MalformedRecord,
                field: String::new(),
                message: format!(
                    "line has {n} bytes; at most {MAX_LINE_BYTES} (a record within the field limits takes far less)"
                ),
            })),
            Line::Bytes => bulk::content(&lines.buf).map(bulk::parse_line),
        };
        let record = match parsed {
            None => continue,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                chunk
                    .entries
                    .push(Entry::Local(ReportLine::rejected(number, e)));
                continue;
            }
        };
        let size = record.encoded_len() + 8;
        if chunk.remote > 0 && bytes + size > opts.max_chunk_bytes {
            bytes = 0;
            if !io
                .send(&mut chunk, &mut records, offset - line.1 as u64)
                .await
            {
                // This line is read but will not be sent: it goes with the rest.
                chunk.entries.push(Entry::Remote(number));
                chunk.remote += 1;
                break Some(ReadStop::Halted);
            }
        }
        records.push(record);
        bytes += size;
        chunk.entries.push(Entry::Remote(number));
        chunk.remote += 1;
        if chunk.remote >= opts.batch_size {
            bytes = 0;
            if !io.send(&mut chunk, &mut records, offset).await {
                break Some(ReadStop::Halted);
            }
        }
    };
    if !chunk.entries.is_empty() {
        io.send(&mut chunk, &mut records, offset).await;
    }
    if let Some(why) = stopped {
        let _ = io.chunks.send(Read::Stopped(number + 1, why));
    }
    number
}

/// A stop receiver for callers without signals (benchmarks, library use).
pub fn no_stop() -> watch::Receiver<u32> {
    watch::channel(0).1
}

/// Submits the file and returns what happened. Fails (nothing sent) when the file
/// cannot be opened or the gateway cannot be reached; once records are on their way,
/// any stop is reported in the [`Summary`], with the report written up to it.
///
/// `stop` counts stop requests (signals): the first stops reading and waits for the
/// answers of the chunks already sent; the second stops waiting.
pub async fn run(opts: &SubmitOptions, stop: watch::Receiver<u32>) -> anyhow::Result<Summary> {
    if let Some(report) = &opts.report
        && same_file(&opts.file, report)
    {
        return Err(anyhow!(
            "--report {} is the input file: the report would overwrite it; nothing was sent",
            report.display()
        ));
    }
    let file = tokio::fs::File::open(&opts.file)
        .await
        .with_context(|| format!("cannot read {}", opts.file.display()))?;
    let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    // Read at least the first 4 bytes (however a pipe delivers them; up to 4 KiB from a
    // file) to tell what the file is, then read on from there.
    let mut file = file;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    while head.len() < MAGIC_BYTES {
        let mut buf = vec![0u8; SNIFF_BYTES - head.len()];
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf)
            .await
            .with_context(|| format!("cannot read {}", opts.file.display()))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    if let Some(what) = not_json_lines(&head) {
        return Err(anyhow!("{} {what}; nothing was sent", opts.file.display()));
    }
    let input = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(head), file);
    run_input(opts, input, total, stop).await
}

/// How much of a file is read at most to tell what it is...
const SNIFF_BYTES: usize = 4096;
/// ...and at least (the longest byte-order mark or magic number checked).
const MAGIC_BYTES: usize = 4;

/// Whether `a` and `b` name the same file (through links or `..`, too).
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Why a file that starts with `head` is not UTF-8 JSON Lines at all (refused before
/// anything is sent), or None.
pub fn not_json_lines(head: &[u8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(&[0xFF, 0xFE, 0, 0]) || starts(&[0, 0, 0xFE, 0xFF]) {
        Some("is UTF-32 (it starts with a UTF-32 byte-order mark): save it as UTF-8")
    } else if starts(&[0xFF, 0xFE]) || starts(&[0xFE, 0xFF]) {
        Some("is UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8")
    } else if starts(&[0x1F, 0x8B]) {
        Some("is gzip-compressed: decompress it first (submit compresses what it sends)")
    } else if starts(b"PK\x03\x04") {
        Some("is a ZIP archive (a spreadsheet?): export it as UTF-8 JSON Lines")
    } else if head.iter().take(SNIFF_BYTES).any(|b| *b == 0) {
        Some(
            "has NUL bytes: it looks like UTF-16 or UTF-32 without a byte-order mark, or a binary file; save it as UTF-8",
        )
    } else {
        None
    }
}

/// [`run`] over any input (`total` bytes, for the progress bar).
pub async fn run_input<R: AsyncRead + Unpin + Send + 'static>(
    opts: &SubmitOptions,
    input: R,
    total: u64,
    mut stop: watch::Receiver<u32>,
) -> anyhow::Result<Summary> {
    // A report that cannot be written is found out before anything is sent; an old
    // report is kept until the gateway has taken the call.
    let mut report = Report::open(opts.report.as_ref()).await?;
    let mut client = connect(opts).await?;
    let started = Instant::now();

    let window = opts.window.max(1);
    let (req_tx, req_rx) = mpsc::channel::<(u64, proto::SubmitRequest)>(window);
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Read>();
    let (halt, halt_rx) = watch::channel(false);
    let read_opts = ReadOptions {
        batch_size: opts.batch_size.max(1),
        max_chunk_bytes: MAX_CHUNK_BYTES,
        from_line: opts.from_line.max(1),
    };
    let (limits_tx, limits_rx) = watch::channel(None);
    let reader = tokio::spawn(read_chunks(
        input,
        read_opts,
        limits_rx,
        Reader {
            requests: req_tx,
            sent: 0,
            chunks: chunk_tx,
            stop: stop.clone(),
            halt: halt_rx,
        },
    ));

    // The requests reach the call through a relay, so that a new call can take over
    // (resending what was not answered) when the gateway asks to back off.
    let (call_tx, call_rx) = mpsc::channel::<proto::SubmitRequest>(window);
    let (swap_tx, swap_rx) = mpsc::channel::<Swap>(1);
    let relay = tokio::spawn(relay(req_rx, swap_rx, call_tx));
    let answers = client
        .submit_stream(ReceiverStream::new(call_rx))
        .await
        .map_err(|s| {
            reader.abort();
            relay.abort();
            anyhow!("{}; nothing was sent", tls::explain_status(&s, &opts.cert))
        })?;
    let limits = ServerLimits::of(answers.metadata());
    if let Some(n) = limits.max_records.filter(|n| opts.batch_size > *n) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "note: --batch-size {} is above the gateway's limit of {n} records a chunk: sending chunks of {n}",
            opts.batch_size
        );
    }
    let _ = limits_tx.send(Some(limits));
    let mut answers = answers.into_inner();

    let bar = progress_bar(total, opts.progress);
    let mut summary = Summary {
        reported: opts.report.is_some(),
        ..Summary::default()
    };
    // Once the gateway stops answering, the rest is collected without waiting.
    let mut failed: Option<String> = None;
    // Chunks taken from the reader ahead of their turn (to resend their requests).
    let mut ahead: std::collections::VecDeque<Read> = std::collections::VecDeque::new();
    loop {
        let read = match ahead.pop_front() {
            Some(r) => r,
            None => match chunk_rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let chunk = match read {
            Read::Chunk(c) => c,
            Read::Stopped(line, why) => {
                summary.unread_from = Some(line);
                match why {
                    ReadStop::Error(e) => {
                        failed.get_or_insert(format!("cannot read line {line}: {e}"));
                    }
                    ReadStop::Signal => {
                        failed.get_or_insert("stopped by a signal".into());
                    }
                    ReadStop::Halted => {}
                }
                continue;
            }
        };
        let mut outcomes = std::collections::VecDeque::new();
        let mut refusals = 0u32;
        while chunk.remote > 0 && failed.is_none() {
            match answer(&mut answers, &mut stop).await {
                Ok(o) => {
                    outcomes.extend(o);
                    break;
                }
                Err(Answerless::BackOff(ms, why)) if refusals < MAX_BACKOFFS => {
                    // Nothing of this chunk or the ones after it was applied: wait as
                    // advised, then resend them all on a new call.
                    refusals += 1;
                    summary.backoffs += 1;
                    let wait = Duration::from_millis(ms.clamp(1, MAX_BACKOFF_MS));
                    summary.backed_off += wait;
                    bar.set_message(format!(
                        "{} records; the gateway asks to slow down: resending in {} ms ({why})",
                        summary.records,
                        wait.as_millis()
                    ));
                    let stopping = tokio::select! {
                        () = tokio::time::sleep(wait) => false,
                        () = requested(&mut stop) => true,
                    };
                    if stopping {
                        failed = Some("stopped by a signal while backing off".into());
                        let _ = halt.send(true);
                        break;
                    }
                    while let Ok(r) = chunk_rx.try_recv() {
                        ahead.push_back(r);
                    }
                    let resend: Vec<(u64, proto::SubmitRequest)> = chunk
                        .request
                        .iter()
                        .chain(ahead.iter().filter_map(|r| match r {
                            Read::Chunk(c) => c.request.as_ref(),
                            Read::Stopped(..) => None,
                        }))
                        .cloned()
                        .collect();
                    let (tx, rx) = mpsc::channel::<proto::SubmitRequest>(window);
                    match client.submit_stream(ReceiverStream::new(rx)).await {
                        Ok(a) => answers = a.into_inner(),
                        Err(s) => {
                            failed = Some(format!(
                                "the gateway refused a new call after backing off: {}",
                                tls::explain_status(&s, &opts.cert)
                            ));
                            let _ = halt.send(true);
                            break;
                        }
                    }
                    let through = resend.last().map_or(0, |(n, _)| *n);
                    let requests = resend.into_iter().map(|(_, r)| r).collect();
                    if swap_tx
                        .send(Swap {
                            tx,
                            requests,
                            through,
                        })
                        .await
                        .is_err()
                    {
                        failed = Some("the request relay stopped".into());
                        let _ = halt.send(true);
                        break;
                    }
                }
                Err(Answerless::BackOff(_, why)) => {
                    failed = Some(format!(
                        "the gateway refused the same chunk {MAX_BACKOFFS} times in a row: {why}"
                    ));
                    let _ = halt.send(true);
                }
                Err(Answerless::Failed(why)) => {
                    failed = Some(why);
                    // Stop the reader: what it has not read is reported as unread.
                    let _ = halt.send(true);
                }
            }
        }
        let mut lines = Vec::with_capacity(chunk.entries.len());
        for entry in chunk.entries {
            match entry {
                Entry::Local(l) => {
                    summary.local += 1;
                    if l.message.contains(bulk::NOT_UTF8) {
                        summary.not_utf8 += 1;
                    }
                    lines.push(l)
                }
                Entry::Remote(n) => match outcomes.pop_front() {
                    Some(o) => lines.push(ReportLine::from_outcome(n, o)),
                    None => summary.unanswered(n),
                },
            }
        }
        if report.failed {
            // Answered or not, these lines are not in the report.
            lines.iter().for_each(|l| summary.unanswered(l.line));
            summary.normalize();
        } else if let Err(e) = report.write(&lines).await {
            failed.get_or_insert(format!("{e:#}"));
            let _ = halt.send(true);
            lines.iter().for_each(|l| summary.unanswered(l.line));
            summary.normalize();
        } else {
            for l in &lines {
                summary.add(l);
            }
        }
        bar.set_position(chunk.end_offset);
        let rate = summary.records as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} records, {rate:.0} records/s", summary.records));
    }
    let lines_read = reader
        .await
        .map_err(|e| anyhow!("the file reader failed: {e}"))?;
    relay.abort();
    if lines_read < opts.from_line && summary.records == 0 && summary.unanswered.is_empty() {
        return Err(anyhow!(
            "--from-line {} is past the end of the input ({}); nothing was sent",
            opts.from_line,
            crate::cli::count(lines_read, "line", "lines")
        ));
    }
    if let Err(e) = report.finish().await {
        failed.get_or_insert(format!("cannot write the report: {e:#}"));
    }
    bar.finish_and_clear();
    summary.stopped = failed;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Consecutive back-offs on one chunk before the run gives up.
const MAX_BACKOFFS: u32 = 50;
/// Longest single wait, whatever the gateway advises.
const MAX_BACKOFF_MS: u64 = 60_000;

/// Why a chunk got no answer.
enum Answerless {
    /// The gateway refused it for now (RESOURCE_EXHAUSTED or UNAVAILABLE with
    /// `grpc-retry-pushback-ms`): nothing of it or what followed was applied; wait this
    /// many milliseconds and resend.
    BackOff(u64, String),
    /// The call ended otherwise.
    Failed(String),
}

/// A call's end as an [`Answerless`]: advice to back off, or a failure.
fn answerless(s: &tonic::Status) -> Answerless {
    let pushback = s
        .metadata()
        .get(crate::error::RETRY_PUSHBACK)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match (s.code(), pushback) {
        (tonic::Code::ResourceExhausted | tonic::Code::Unavailable, Some(ms)) => {
            Answerless::BackOff(ms, format!("{:?}: {}", s.code(), s.message()))
        }
        _ => Answerless::Failed(format!(
            "the gateway stopped answering: {} ({})",
            s.message(),
            s.code()
        )),
    }
}

/// The next answer of the call, or why there is none; a second stop request gives up
/// waiting.
async fn answer(
    answers: &mut tonic::Streaming<proto::BatchOutcome>,
    stop: &mut watch::Receiver<u32>,
) -> Result<Vec<proto::RecordOutcome>, Answerless> {
    let closed = || Answerless::Failed("the gateway closed the call".into());
    loop {
        if *stop.borrow() >= 2 {
            return Err(Answerless::Failed(
                "stopped by a second signal without waiting for answers".into(),
            ));
        }
        tokio::select! {
            m = answers.message() => {
                return match m {
                    Ok(Some(b)) => Ok(b.outcomes),
                    Ok(None) => Err(closed()),
                    Err(s) => Err(answerless(&s)),
                };
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    // No more signals can come: wait for the answer alone.
                    return match answers.message().await {
                        Ok(Some(b)) => Ok(b.outcomes),
                        Ok(None) => Err(closed()),
                        Err(s) => Err(answerless(&s)),
                    };
                }
            }
        }
    }
}

/// A new call taking over from one the gateway ended with advice to back off: the
/// requests to resend first (numbered up to `through`), then the reader's next ones.
struct Swap {
    tx: mpsc::Sender<proto::SubmitRequest>,
    requests: Vec<proto::SubmitRequest>,
    through: u64,
}

/// Passes the reader's numbered requests to the current call; on a [`Swap`], sends its
/// requests to the new call and goes on with the reader's requests after `through`
/// (those up to it were in the swap). Ends the call when the reader is done.
async fn relay(
    mut from: mpsc::Receiver<(u64, proto::SubmitRequest)>,
    mut swaps: mpsc::Receiver<Swap>,
    first: mpsc::Sender<proto::SubmitRequest>,
) {
    let mut out = Some(first);
    let mut through = 0u64;
    let mut reader_done = false;
    // A request the ended call did not take (its chunk may not be among the resent).
    let mut stash: Option<(u64, proto::SubmitRequest)> = None;
    loop {
        tokio::select! {
            biased;
            swap = swaps.recv() => {
                let Some(swap) = swap else { return };
                let mut ok = true;
                for r in swap.requests {
                    if swap.tx.send(r).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                through = through.max(swap.through);
                if ok && let Some((n, r)) = stash.take() && n > through {
                    ok = swap.tx.send(r).await.is_ok();
                    through = n;
                }
                // After the reader is done, the new call ends once it has its resends.
                out = (ok && !reader_done).then_some(swap.tx);
            }
            next = from.recv(), if out.is_some() && !reader_done => match next {
                None => {
                    reader_done = true;
                    out = None;
                }
                Some((n, r)) if n <= through => drop(r),
                Some((n, r)) => {
                    if let Some(tx) = &out {
                        match tx.send(r).await {
                            Ok(()) => through = n,
                            Err(mpsc::error::SendError(r)) => {
                                // The call ended: kept for the next call (unless the
                                // swap resends it with its chunk).
                                stash = Some((n, r));
                                out = None;
                            }
                        }
                    }
                }
            },
        }
    }
}

/// The report file, written and flushed chunk by chunk so that what was answered is
/// on disk whatever stops the run. After a failed write nothing more is written (the
/// summary names every line that is not in it).
struct Report {
    file: Option<tokio::fs::File>,
    buf: Vec<u8>,
    failed: bool,
    /// Bytes of whole lines written so far (a failed write is cut back to it).
    written: u64,
    /// (partial file, report) to rename when the run ends.
    rename: Option<(PathBuf, PathBuf)>,
}

impl Drop for Report {
    /// A run that stops before it could answer anything leaves no partial file.
    fn drop(&mut self) {
        if let Some((partial, _)) = self.rename.take() {
            let _ = std::fs::remove_file(partial);
        }
    }
}

impl Report {
    /// Opens the report: a file beside it (`<report>.partial`) that becomes the report
    /// when the run ends, however it ends, so that an earlier report is never lost to a
    /// run that fails before answering anything. A device or pipe is written directly.
    async fn open(path: Option<&PathBuf>) -> anyhow::Result<Self> {
        let (file, rename) = match path {
            Some(p) => {
                let direct = p.exists() && !p.is_file();
                let target = if direct {
                    p.clone()
                } else {
                    let mut name = p.as_os_str().to_owned();
                    name.push(".partial");
                    PathBuf::from(name)
                };
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(!direct)
                    .open(&target)
                    .await
                    .with_context(|| {
                        format!("cannot write report {}; nothing was sent", p.display())
                    })?;
                (Some(file), (!direct).then(|| (target, p.clone())))
            }
            None => (None, None),
        };
        Ok(Self {
            file,
            buf: Vec::with_capacity(1 << 16),
            failed: false,
            written: 0,
            rename,
        })
    }

    async fn write(&mut self, lines: &[ReportLine]) -> anyhow::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.buf.clear();
        for l in lines {
            serde_json::to_writer(&mut self.buf, l)?;
            self.buf.push(b'\n');
        }
        // tokio's File writes in the background: flush so that the lines are in the
        // file now, whatever stops the run next.
        let written = async {
            file.write_all(&self.buf).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = written {
            self.failed = true;
            // A torn last line would contradict the summary: cut the file back to the
            // whole lines before it (best effort; a device has no length).
            if file.metadata().await.is_ok_and(|m| m.is_file()) {
                let _ = file.set_len(self.written).await;
            }
            return Err(anyhow!("cannot write the report: {e}"));
        }
        self.written += self.buf.len() as u64;
        Ok(())
    }

    /// Flushes the report and puts it in place.
    async fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(f) = self.file.as_mut()
            && !self.failed
        {
            f.flush().await?;
            f.sync_all().await?;
        }
        if let Some((partial, report)) = self.rename.take() {
            tokio::fs::rename(&partial, &report)
                .await
                .with_context(|| {
                    format!("cannot put the report in place at {}", report.display())
                })?;
        }
        Ok(())
    }
}

fn progress_bar(total: u64, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {percent:>3}% {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// `1-3, 7, 9-12`.
fn ranges(r: &[(usize, usize)]) -> String {
    r.iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The closing lines: first (stderr) what is missing from the report when the run
/// stopped early, then (stdout) the counts per outcome and per code. Neither output
/// failing (a closed pipe) stops the other.
pub fn print_summary(s: &Summary) {
    use std::io::Write as _;
    if !s.complete() {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "incomplete: {}",
            s.stopped.as_deref().unwrap_or("stopped early")
        );
        if !s.unanswered.is_empty() {
            let _ = writeln!(
                err,
                "not in the report ({} records, not answered or not recorded): lines {}",
                s.unanswered_count(),
                ranges(&s.unanswered)
            );
        }
        if let Some(l) = s.unread_from {
            let _ = writeln!(err, "not read: line {l} to the end of the file");
        }
        if let Some(l) = s.resume_line() {
            let _ = writeln!(
                err,
                "resend with --from-line {l} (or the whole file): records already applied answer DUPLICATE"
            );
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} records in {:.1}s ({:.0} records/s)",
        s.records,
        s.elapsed.as_secs_f64(),
        s.rate()
    );
    for (k, v) in &s.outcomes {
        let _ = writeln!(out, "  {k:<24} {v}");
    }
    if !s.codes.is_empty() {
        let _ = writeln!(out, "codes:");
        for (k, v) in &s.codes {
            let _ = writeln!(out, "  {k:<32} {v}");
        }
    }
    drop(out);
    let mut err = std::io::stderr().lock();
    if s.not_utf8 > 0 {
        let _ = writeln!(
            err,
            "{} not UTF-8: the file is probably GBK or GB18030 (as Chinese spreadsheet tools save it); convert it (`iconv -f GB18030 -t UTF-8 FILE > FILE.utf8`) and resend it: records already applied answer DUPLICATE",
            crate::cli::count(s.not_utf8, "line is", "lines are")
        );
    }
    if s.local > 0 && !s.reported {
        let _ = writeln!(
            err,
            "{} refused here and never reached the gateway (`status rejections` does not list them): rerun with --report FILE to keep each line's reason",
            crate::cli::count(s.local, "line was", "lines were")
        );
    }
    if s.backoffs > 0 {
        let _ = writeln!(
            err,
            "the gateway asked to slow down {} (over this platform's rate, or at capacity): waited {:.1} s in all and resent every chunk concerned",
            crate::cli::count(s.backoffs as usize, "time", "times"),
            s.backed_off.as_secs_f64()
        );
    }
    if s.records > 0 && s.local == s.records && s.not_utf8 == 0 {
        let _ = writeln!(
            err,
            "no line of the file is a JSON record, so nothing was sent: submit reads JSON Lines, one JSON object per line (README, \"Bulk file format\"); convert a CSV, spreadsheet or other file first"
        );
    }
}
