//! The `oip-gateway` command: run the gateway, regenerate the example certificates,
//! submit a bulk file, generate load.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use oip_gateway::{app, certs, config, loadgen, submit, telemetry};

#[derive(Parser)]
#[command(
    name = "oip-gateway",
    version,
    about = "Data-exchange gateway for occupational injury protection of gig workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (defaults: 127.0.0.1:50051, certs-example/, ./data/oip.db).
    Serve {
        /// Configuration file; every key can be overridden by an OIP_* variable.
        #[arg(long, env = "OIP_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Write the example PKI (CA, server, one client certificate per role, bad cases).
    Certs {
        #[arg(long, default_value = "certs-example")]
        out: PathBuf,
    },
    /// Submit a JSON Lines bulk file and write the outcome report.
    Submit(SubmitArgs),
    /// Write a synthetic bulk file of valid workers and orders (for benchmarks).
    Loadgen {
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        /// Prefix of generated worker and order ids (use a new one per run).
        #[arg(long, default_value = "L")]
        id_prefix: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct SubmitArgs {
    /// The JSON Lines file to submit.
    file: PathBuf,
    /// Write the outcome report (JSON Lines, one line per input record) here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, env = "OIP_ENDPOINT", default_value = "https://127.0.0.1:50051")]
    endpoint: String,
    #[arg(long, default_value = "certs-example/ca.pem")]
    ca: PathBuf,
    /// Client certificate (default: demo platform A).
    #[arg(long, default_value = "certs-example/platform-a.pem")]
    cert: PathBuf,
    #[arg(long, default_value = "certs-example/platform-a.key")]
    key: PathBuf,
    /// Server name to verify against the gateway's certificate.
    #[arg(long, default_value = "localhost")]
    domain: String,
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Chunks in flight ahead of their answers.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            telemetry::init();
            let config = config::Config::load(&config)?;
            let gateway = app::Gateway::start(config).await?;
            // A machine-readable line for scripts and tests that start on port 0.
            println!("listening on {}", gateway.addr);
            gateway.run_until_signal().await
        }
        Command::Certs { out } => {
            certs::generate(&out)?;
            println!("wrote example certificates to {}", out.display());
            Ok(())
        }
        Command::Submit(a) => {
            let opts = submit::SubmitOptions {
                file: a.file,
                report: a.report,
                endpoint: a.endpoint,
                ca: a.ca,
                cert: a.cert,
                key: a.key,
                domain: a.domain,
                batch_size: a.batch_size,
                window: a.window,
                progress: !a.quiet,
            };
            let summary = submit::run(&opts).await?;
            submit::print_summary(&summary);
            Ok(())
        }
        Command::Loadgen {
            workers,
            orders,
            id_prefix,
            seed,
            out,
        } => {
            let spec = loadgen::LoadSpec {
                workers: workers.max(1),
                orders,
                start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
                id_prefix,
                seed,
            };
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            loadgen::write(&spec, &mut w)?;
            std::io::Write::flush(&mut w)?;
            println!(
                "wrote {} workers and {orders} orders to {}",
                spec.workers,
                out.display()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
