//! The command line is one tree and documents itself: every command, subcommand and
//! option has help text; every client command takes the same connection flags; the
//! commands that moved under `admin` are only there. The tree is walked from its clap
//! definition (`oip_gateway::cli::args::Cli`), and the binary's `--help` is run for
//! every path of it, so the binary parses what is walked here.

use std::process::Command;

use clap::CommandFactory;
use oip_gateway::cli::args::Cli;

/// Every command of the tree with its path (the root's path is empty), built so that
/// global options are propagated to the subcommands that accept them.
fn commands() -> Vec<(Vec<String>, clap::Command)> {
    fn walk(path: Vec<String>, cmd: &clap::Command, out: &mut Vec<(Vec<String>, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands() {
            // clap's own `help` subcommand (`oip-gateway help admin`) is not ours.
            if sub.get_name() == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            walk(p, sub, out);
        }
    }
    let mut root = Cli::command();
    root.build();
    let mut out = Vec::new();
    walk(Vec::new(), &root, &mut out);
    out
}

fn documented(s: Option<&clap::builder::StyledStr>) -> bool {
    s.is_some_and(|s| !s.to_string().trim().is_empty())
}

#[test]
fn every_command_and_option_has_help_text() {
    let mut missing = Vec::new();
    for (path, cmd) in commands() {
        let name = format!("oip-gateway {}", path.join(" "));
        if !path.is_empty() && !documented(cmd.get_about()) && !documented(cmd.get_long_about()) {
            missing.push(format!("{name}: the command has no help text"));
        }
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            if !documented(arg.get_help()) && !documented(arg.get_long_help()) {
                let shown = arg
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .unwrap_or_else(|| arg.get_id().to_string());
                missing.push(format!("{name} {shown}: no help text"));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented:\n{}", missing.join("\n"));
}

#[test]
fn every_client_command_takes_the_connection_flags() {
    let clients = ["submit", "status", "pull", "admin"];
    let mut checked = 0;
    for (path, cmd) in commands() {
        if !path.first().is_some_and(|p| clients.contains(&p.as_str())) {
            continue;
        }
        // Leaves only: what a user runs.
        if cmd.get_subcommands().any(|s| s.get_name() != "help") {
            continue;
        }
        for flag in ["endpoint", "ca", "cert", "key", "domain"] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("oip-gateway {} has no --{flag}", path.join(" ")));
            assert!(
                documented(arg.get_help()),
                "oip-gateway {} --{flag} has no help text",
                path.join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked} client commands");
}

#[test]
fn one_tree_without_duplicates() {
    let paths: Vec<String> = commands().into_iter().map(|(p, _)| p.join(" ")).collect();
    for gone in ["dead-letters", "audit"] {
        assert!(
            !paths.iter().any(|p| p == gone),
            "`{gone}` lives under `admin` only"
        );
    }
    for present in [
        "admin dead-letters list",
        "admin dead-letters replay",
        "admin dead-letters discard",
        "admin audit query",
        "admin audit verify",
        "status deliveries",
        "status declarations",
        "status rejections",
        "status statements",
        "status workers",
        "status orders",
    ] {
        assert!(paths.iter().any(|p| p == present), "no `{present}`");
    }
}

#[test]
fn the_binary_prints_help_for_every_path_of_the_tree() {
    let mut failures = Vec::new();
    for (path, _) in commands() {
        let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .args(&path)
            .arg("--help")
            .output()
            .expect("run oip-gateway --help");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("Usage: oip-gateway") {
            failures.push(format!(
                "oip-gateway {} --help: {:?}\n{}",
                path.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A removed path is refused, not run.
    let out = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
        .args(["dead-letters", "list"])
        .output()
        .expect("run oip-gateway");
    assert!(!out.status.success());
}
