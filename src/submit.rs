//! `oip-gateway submit`: sends a JSON Lines bulk file over mTLS in chunks on one
//! `SubmitStream` call (several chunks in flight, applied in file order), writes the
//! outcome report in input order and counts outcomes and codes.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::bulk::{self, ReportLine};
use crate::proto::{self, platform_service_client::PlatformServiceClient};
use crate::tls;

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
    pub batch_size: usize,
    /// Chunks sent ahead of their answers.
    pub window: usize,
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub records: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub codes: BTreeMap<String, usize>,
    pub elapsed: Duration,
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

    /// Records per second over the whole run.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens an mTLS channel to the gateway.
pub async fn connect(opts: &SubmitOptions) -> anyhow::Result<PlatformServiceClient<Channel>> {
    let tls = tls::client_config(&opts.ca, &opts.cert, &opts.key, &opts.domain)?;
    let channel = Channel::from_shared(opts.endpoint.clone())
        .with_context(|| format!("bad endpoint {}", opts.endpoint))?
        .tls_config(tls)?
        .connect()
        .await
        .map_err(|e| {
            anyhow!(
                "gateway unreachable at {}: {}",
                opts.endpoint,
                error_chain(&e)
            )
        })?;
    Ok(PlatformServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
}

/// Submits the file and returns the counts. Fails when the file cannot be read or the
/// gateway cannot be reached or stops answering.
pub async fn run(opts: &SubmitOptions) -> anyhow::Result<Summary> {
    let file = tokio::fs::File::open(&opts.file)
        .await
        .with_context(|| format!("cannot read {}", opts.file.display()))?;
    let total = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut client = connect(opts).await?;
    let started = Instant::now();

    let (req_tx, req_rx) = mpsc::channel::<proto::SubmitRequest>(opts.window.max(1));
    let (chunk_tx, mut chunk_rx) = mpsc::unbounded_channel::<Chunk>();
    let batch_size = opts.batch_size.max(1);
    let path = opts.file.clone();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::with_capacity(1 << 20, file).lines();
        let (mut records, mut chunk) = (Vec::with_capacity(batch_size), new_chunk());
        let mut number = 0usize;
        let mut offset = 0u64;
        while let Some(line) = lines
            .next_line()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?
        {
            number += 1;
            offset += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            match bulk::parse_line(&line) {
                Ok(r) => {
                    records.push(r);
                    chunk.entries.push(Entry::Remote(number));
                    chunk.remote += 1;
                }
                Err(e) => chunk
                    .entries
                    .push(Entry::Local(ReportLine::rejected(number, e))),
            }
            if chunk.remote == batch_size {
                chunk.end_offset = offset;
                let _ = chunk_tx.send(std::mem::replace(&mut chunk, new_chunk()));
                let records = std::mem::replace(&mut records, Vec::with_capacity(batch_size));
                if req_tx.send(proto::SubmitRequest { records }).await.is_err() {
                    return Ok(());
                }
            }
        }
        chunk.end_offset = offset;
        if !chunk.entries.is_empty() {
            let _ = chunk_tx.send(chunk);
            if !records.is_empty() {
                let _ = req_tx.send(proto::SubmitRequest { records }).await;
            }
        }
        anyhow::Ok(())
    });

    let mut answers = client
        .submit_stream(ReceiverStream::new(req_rx))
        .await
        .map_err(|s| {
            anyhow!(
                "gateway refused the submission: {} ({})",
                s.message(),
                s.code()
            )
        })?
        .into_inner();

    let mut report: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match &opts.report {
        Some(p) => Box::new(BufWriter::new(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("cannot write report {}", p.display()))?,
        )),
        None => Box::new(tokio::io::sink()),
    };
    let bar = progress_bar(total, opts.progress);
    let mut summary = Summary::default();
    let mut buf = Vec::with_capacity(1 << 16);
    while let Some(chunk) = chunk_rx.recv().await {
        let mut outcomes = VecDeque::new();
        if chunk.remote > 0 {
            let answer = answers
                .message()
                .await
                .map_err(|s| {
                    anyhow!(
                        "gateway stopped after {} records: {} ({})",
                        summary.records,
                        s.message(),
                        s.code()
                    )
                })?
                .ok_or_else(|| {
                    anyhow!(
                        "gateway closed the stream after {} records",
                        summary.records
                    )
                })?;
            outcomes.extend(answer.outcomes);
        }
        for entry in chunk.entries {
            let line = match entry {
                Entry::Local(l) => l,
                Entry::Remote(n) => {
                    let o = outcomes
                        .pop_front()
                        .ok_or_else(|| anyhow!("gateway answered fewer outcomes than records"))?;
                    ReportLine::from_outcome(n, o)
                }
            };
            summary.add(&line);
            serde_json::to_writer(&mut buf, &line)?;
            buf.push(b'\n');
        }
        report.write_all(&buf).await?;
        buf.clear();
        bar.set_position(chunk.end_offset);
        let rate = summary.records as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{} records, {rate:.0} records/s", summary.records));
    }
    reader
        .await
        .map_err(|e| anyhow!("reader task failed: {e}"))??;
    report.flush().await?;
    bar.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn new_chunk() -> Chunk {
    Chunk {
        entries: Vec::new(),
        remote: 0,
        end_offset: 0,
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

/// The closing lines: counts per outcome and per code.
pub fn print_summary(s: &Summary) {
    println!(
        "{} records in {:.1}s ({:.0} records/s)",
        s.records,
        s.elapsed.as_secs_f64(),
        s.rate()
    );
    for (k, v) in &s.outcomes {
        println!("  {k:<24} {v}");
    }
    if !s.codes.is_empty() {
        println!("codes:");
        for (k, v) in &s.codes {
            println!("  {k:<32} {v}");
        }
    }
}
