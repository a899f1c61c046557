//! The `oip-gateway` command tree: every command, subcommand and option, each with its
//! help text (a test walks the tree and fails on anything undocumented). The binary
//! (`src/main.rs`) parses [`Cli`] and runs what it names.
//!
//! ```text
//! serve                      the gateway
//! certs [ca|issue|sign]      the example PKI, or a CA of your own
//! submit FILE                a platform's bulk file (JSON Lines)
//! status deliveries|declarations|rejections|statements|workers|orders
//!                            a platform's own records as the gateway holds them
//! pull contributions|social-security
//!                            tax bureau and social-security agency
//! admin platforms|grants|rates|dead-letters|audit
//!                            administrators (audit: query, verify)
//! backend-sim serve|stats|faults
//!                            the simulated backends
//! loadgen                    a synthetic bulk file
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::Connection;
use super::admin::AdminCommand;
use super::pull::PullCommand;
use super::status::StatusCommand;
use crate::{certs, config};

/// `oip-gateway`: the whole command line.
#[derive(Parser, Debug)]
#[command(
    name = "oip-gateway",
    version,
    about = "Data-exchange gateway for occupational injury protection of gig workers",
    long_about = "Data-exchange gateway for occupational injury protection of gig workers \
                  (新就业形态人员职业伤害保障): run it (serve), and the clients of each role: \
                  platforms (submit, status), the tax bureau and social-security agencies \
                  (pull), administrators (admin).",
    after_help = "Client commands (submit, status, pull, admin) connect over mutual TLS with \
                  --endpoint (or OIP_ENDPOINT), --ca, --cert, --key and --domain; each \
                  defaults to the role's example certificate in certs-example/."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (defaults: 127.0.0.1:50051, certs-example/, ./data/oip.db).
    Serve {
        /// Configuration file; every key can be overridden by an OIP_* variable.
        #[arg(long, env = "OIP_CONFIG", default_value = config::DEFAULT_PATH, value_name = "FILE")]
        config: PathBuf,
        /// Print the effective configuration (file and OIP_* variables, secrets
        /// redacted) as TOML and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Certificates: without a subcommand, write the example PKI (CA with its key,
    /// server, one client certificate per role, bad cases); `ca` makes a CA of your own
    /// and `issue` issues client or server certificates with it.
    Certs(certs::CertsArgs),
    /// Submit a JSON Lines bulk file of workers, orders, declarations and accidents, and
    /// write the outcome report (platform certificate, default
    /// certs-example/platform-a.pem).
    Submit(SubmitArgs),
    /// A platform's own records as the gateway holds them: one line per item (or JSON
    /// Lines with --json), over the PlatformService list RPCs (platform certificate,
    /// default certs-example/platform-a.pem).
    Status {
        /// What to list.
        #[command(subcommand)]
        action: StatusCommand,
        /// Print each item as one JSON object per line (the proto message, field names
        /// as in the .proto files); the page's closing line (`0 entries`, `more entries
        /// exist: ...`) then goes to stderr, so stdout is JSON Lines only.
        #[arg(long, global = true)]
        json: bool,
        // Last: the options declared after it are listed under its heading.
        /// Where the gateway is and which certificate to present.
        #[command(flatten)]
        connection: Connection,
    },
    /// Pull records changed since a cursor into a file (tax or social-security
    /// certificate), printing the cursor to resume from.
    Pull {
        /// What to pull.
        #[command(subcommand)]
        action: PullCommand,
        /// Where the gateway is and which certificate to present.
        #[command(flatten)]
        connection: Connection,
    },
    /// Administration: platforms, grants, rates, dead letters, the audit log (query
    /// and verify) (administrator certificate, default certs-example/admin.pem).
    Admin {
        /// What to administer.
        #[command(subcommand)]
        action: AdminCommand,
        /// Where the gateway is and which certificate to present.
        #[command(flatten)]
        connection: Connection,
    },
    /// The simulated social-security and tax backends (serve, read their counts, inject
    /// faults).
    BackendSim {
        /// What to do with the simulator.
        #[command(subcommand)]
        action: SimAction,
    },
    /// Drive a gateway with small calls (one order per call, as platforms report them
    /// live) from N callers for a bounded time, and print orders/s and latency
    /// percentiles (platform certificate, default certs-example/platform-a.pem).
    Load {
        /// Which calls carry the orders.
        #[arg(long, value_enum, default_value_t = crate::cli::load::Mode::Unary)]
        mode: crate::cli::load::Mode,
        /// Calls (streams) in flight at any time.
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Connections the callers are spread over.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// How long to call, in seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Orders per call (unary) or per message (streams).
        #[arg(long, default_value_t = 1)]
        records: usize,
        /// Messages per stream (stream modes).
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// Workers registered first and given the orders in turn.
        #[arg(long, default_value_t = 64)]
        workers: usize,
        /// Prefix of the generated ids (default: one from the clock, so each run's
        /// orders are new).
        #[arg(long)]
        id_prefix: Option<String>,
        /// Industry of the workers and orders (one the platform is registered for).
        #[arg(long, default_value = "INSTANT_DELIVERY")]
        industry: String,
        /// Division code of the orders (one of the platform's pilot divisions).
        #[arg(long, default_value = "320100")]
        division: String,
        /// Where the gateway is and which certificate to present.
        #[command(flatten)]
        connection: crate::cli::Connection,
    },
    /// Write a synthetic bulk file of valid workers and orders (for benchmarks).
    Loadgen {
        /// Workers to generate (at least 1).
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        /// Orders to generate, spread over the workers.
        #[arg(long, default_value_t = 1_000_000)]
        orders: usize,
        /// Prefix of generated worker and order ids (use a new one per run).
        #[arg(long, default_value = "L")]
        id_prefix: String,
        /// Seed of the random generator: the same seed writes the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How the orders spread over workers, cities and time.
        #[arg(long, value_enum, default_value_t = crate::loadgen::Shape::AsTaken)]
        shape: crate::loadgen::Shape,
        /// The JSON Lines file to write (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `backend-sim ...`.
#[derive(Subcommand, Debug)]
pub enum SimAction {
    /// Serve both backends over mTLS until stopped.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: SocketAddr,
        /// The simulator's own SQLite database (created if missing).
        #[arg(long, default_value = "sqlite:data/backend-sim.db", value_name = "URL")]
        database_url: String,
        /// Identity (SAN URI) of the gateway that delivers here; repeat for several.
        /// Only these may deliver; the control service takes administrators only.
        /// Default: the example gateway client certificate, certs-example/gateway.pem.
        #[arg(
            long = "gateway-identity",
            default_value = "oip://gateway/oip-gateway",
            value_name = "URI"
        )]
        gateway_identities: Vec<String>,
        /// The simulator's TLS files.
        #[command(flatten)]
        tls: SimTls,
    },
    /// Print what the simulator holds: applied items per kind, repeats, faults.
    Stats {
        /// Where the simulator is and which certificate to present.
        #[command(flatten)]
        client: SimClient,
    },
    /// Replace the fault settings.
    Faults {
        /// Where the simulator is and which certificate to present.
        #[command(flatten)]
        client: SimClient,
        /// Fraction of calls answered UNAVAILABLE (0..1).
        #[arg(long, default_value_t = 0.0)]
        fail_fraction: f64,
        /// Delay added to every call, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u32,
        /// Idempotency keys to answer INVALID (repeatable).
        #[arg(long = "reject", value_name = "KEY")]
        reject_keys: Vec<String>,
        /// Answer every call UNAVAILABLE until faults are set again without --pause.
        #[arg(long)]
        pause: bool,
    },
}

/// The simulator's server certificate and the CA its clients must chain to.
#[derive(Args, Debug)]
pub struct SimTls {
    /// CA certificate (PEM) client certificates must chain to.
    #[arg(long, default_value = "certs-example/ca.pem", value_name = "FILE")]
    pub ca: PathBuf,
    /// The simulator's server certificate (PEM).
    #[arg(long, default_value = "certs-example/server.pem", value_name = "FILE")]
    pub cert: PathBuf,
    /// Private key (PEM) of --cert.
    #[arg(long, default_value = "certs-example/server.key", value_name = "FILE")]
    pub key: PathBuf,
}

/// How a control command reaches the simulator.
#[derive(Args, Debug)]
pub struct SimClient {
    /// The simulator's address, https://HOST:PORT.
    #[arg(long, default_value = "https://127.0.0.1:50061", value_name = "URL")]
    pub endpoint: String,
    /// CA certificate (PEM) that issued the simulator's certificate.
    #[arg(long, default_value = "certs-example/ca.pem", value_name = "FILE")]
    pub ca: PathBuf,
    /// Client certificate (PEM) to present.
    #[arg(long, default_value = "certs-example/admin.pem", value_name = "FILE")]
    pub cert: PathBuf,
    /// Private key (PEM) of --cert.
    #[arg(long, default_value = "certs-example/admin.key", value_name = "FILE")]
    pub key: PathBuf,
}

/// `submit FILE ...`: its own connection flags (the same names and meanings as the
/// other client commands', with the platform's example certificate as default).
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The JSON Lines file to submit.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Write the outcome report (JSON Lines, one line per input record) here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The gateway's address, https://HOST:PORT (mutual TLS only).
    #[arg(
        long,
        help_heading = "Connection",
        env = "OIP_ENDPOINT",
        default_value = "https://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub endpoint: String,
    /// CA certificate (PEM) that issued the gateway's certificate.
    #[arg(
        long,
        help_heading = "Connection",
        default_value = "certs-example/ca.pem",
        value_name = "FILE"
    )]
    pub ca: PathBuf,
    /// Client certificate (PEM) to present: the platform that submits (demo platform A
    /// by default).
    #[arg(
        long,
        help_heading = "Connection",
        default_value = "certs-example/platform-a.pem",
        value_name = "FILE"
    )]
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1) of --cert.
    #[arg(
        long,
        help_heading = "Connection",
        default_value = "certs-example/platform-a.key",
        value_name = "FILE"
    )]
    pub key: PathBuf,
    /// Server name to verify against the gateway's certificate.
    #[arg(
        long,
        help_heading = "Connection",
        default_value = "localhost",
        value_name = "NAME"
    )]
    pub domain: String,
    /// Records per chunk at most, 1 to 100000 (chunks are also kept under 4 MiB and
    /// under the gateway's advertised limits).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000), value_name = "N")]
    pub batch_size: u32,
    /// Chunks in flight ahead of their answers, 1 to 256.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256), value_name = "N")]
    pub window: u32,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Send chunks uncompressed (they are gzip-compressed by default).
    #[arg(long)]
    pub no_compress: bool,
    /// Skip the lines before this line number: resend the tail of a file after an
    /// interrupted run (the summary names the line).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), value_name = "LINE")]
    pub from_line: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_go_before_or_after_the_subcommand() {
        for args in [
            &[
                "oip-gateway",
                "status",
                "--endpoint",
                "https://x:1",
                "workers",
            ][..],
            &[
                "oip-gateway",
                "status",
                "workers",
                "--endpoint",
                "https://x:1",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            match cli.command {
                Command::Status { connection, .. } => {
                    assert_eq!(connection.endpoint, "https://x:1")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
