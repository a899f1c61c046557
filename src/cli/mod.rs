//! The command line: its definition ([`args`], one tree, every option documented) and
//! the clients of each role: `status ...` (a platform's read-back), `admin ...`
//! (administrators, the audit log included), `pull ...` (tax bureau, social-security
//! agency). Each connects over mTLS with the role's certificate.

// clap prints these doc comments as `--help`, where <placeholder> is the convention.
#![allow(rustdoc::invalid_html_tags)]

pub mod admin;
pub mod args;
pub mod load;
pub mod pull;
pub mod status;

use std::path::PathBuf;

/// `println!` for a command's output. When whoever reads it has gone (`oip-gateway
/// status orders | head -1`), the command ends at once and quietly with success, as
/// Unix tools do, instead of panicking on the broken pipe; any other failure to write
/// ends it with a one-line error and exit status 1. Not for a server's lines: a server
/// keeps serving whatever became of its standard output ([`ready_line`]).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes `text` to standard output as [`outln!`] does, without adding a newline.
pub fn print_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// A server's ready line(s) (`listening on ADDR`), written and flushed at once; a
/// standard output that cannot be written is ignored: the server goes on serving.
pub fn ready_line(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

use clap::Args;
use tonic::transport::Channel;

/// Where the gateway is and which certificate to present: the connection flags of
/// every client command (`status`, `admin`, `pull`), accepted before or after the
/// subcommand.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection")]
pub struct Connection {
    /// The gateway's address, https://HOST:PORT (mutual TLS only).
    #[arg(
        long,
        global = true,
        env = "OIP_ENDPOINT",
        default_value = "https://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub endpoint: String,
    /// CA certificate (PEM) that issued the gateway's certificate.
    #[arg(
        long,
        global = true,
        default_value = "certs-example/ca.pem",
        value_name = "FILE"
    )]
    pub ca: PathBuf,
    /// Client certificate (PEM) to present; its oip:// identity is who calls. Default:
    /// the role's example certificate, certs-example/platform-a.pem for `status`,
    /// admin.pem for `admin`, tax.pem or social-security.pem for `pull`.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1) of --cert. Default: the example key beside the
    /// role's example certificate (certs-example/<role>.key).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Server name to verify against the gateway's certificate.
    #[arg(long, global = true, default_value = "localhost", value_name = "NAME")]
    pub domain: String,
}

impl Connection {
    /// Connects presenting `--cert`/`--key`, or `certs-example/<stem>.pem|key`.
    pub async fn channel(&self, stem: &str) -> anyhow::Result<Channel> {
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("certs-example/{stem}.pem")));
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("certs-example/{stem}.key")));
        let _ = CERT_IN_USE.set(cert.clone());
        crate::tls::connect(&self.endpoint, &self.ca, &cert, &key, &self.domain).await
    }
}

/// The certificate this command presents (one connection per command), for
/// [`status_line`] to name when the gateway refuses it after the handshake.
static CERT_IN_USE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// `n` and the noun in the number it needs: `1 record`, `2 records`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A gRPC failure as one line: the code and the gateway's message (a broken
/// connection explained, see `tls::explain_status`).
pub fn status_line(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        crate::tls::explain_status(
            s,
            CERT_IN_USE
                .get()
                .map_or(std::path::Path::new("(the certificate given)"), |p| {
                    p.as_path()
                })
        )
    )
}

/// The line that ends a page of a listing: `0 entries` when nothing was listed, and
/// when more entries exist, how to continue (`more entries exist: continue with
/// --page-token TOKEN`); None when the listing is complete and not empty.
pub fn page_footer(listed: usize, next_page_token: &str) -> Option<String> {
    if !next_page_token.is_empty() {
        Some(format!(
            "more entries exist: continue with --page-token {next_page_token}"
        ))
    } else if listed == 0 {
        Some("0 entries".to_string())
    } else {
        None
    }
}

/// Free text (a message, a backend's reason) on one line: control characters (line
/// breaks, tabs) become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_when_it_is_empty_and_how_to_continue() {
        assert_eq!(page_footer(0, "").as_deref(), Some("0 entries"));
        assert_eq!(page_footer(3, ""), None);
        assert_eq!(
            page_footer(2, "abc").as_deref(),
            Some("more entries exist: continue with --page-token abc")
        );
    }
}
