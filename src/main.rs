//! The `oip-gateway` command: run the gateway, regenerate the example certificates,
//! submit a bulk file and read back a platform's records (`status`), administer
//! (platforms, grants, rates, dead letters, audit), pull as tax or social security, run
//! the backend simulator, generate load. The command tree is `oip_gateway::cli::args`.

use std::process::ExitCode;

use clap::Parser;

use oip_gateway::cli::args::{Cli, Command, SimAction, SimClient, SubmitArgs};
use oip_gateway::{app, certs, cli, config, loadgen, submit, telemetry};

/// jemalloc instead of glibc's malloc, whose `malloc` and `free` were about a quarter of
/// the ingest and runtime threads' samples in `perf` of a 200,000-record submit, for
/// the same peak memory (issue 13; README, "Speed of live orders and bulk files").
/// Its background threads return freed memory to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

async fn sim_control(
    c: &SimClient,
) -> anyhow::Result<
    oip_gateway::proto::backend_sim_control_client::BackendSimControlClient<
        tonic::transport::Channel,
    >,
> {
    // The same local checks and explained failures as the gateway's clients.
    let channel = oip_gateway::tls::connect(&c.endpoint, &c.ca, &c.cert, &c.key, "localhost")
        .await
        .map_err(|e| anyhow::anyhow!("backend simulator at {}: {e:#}", c.endpoint))?;
    Ok(oip_gateway::proto::backend_sim_control_client::BackendSimControlClient::new(channel))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        // `submit` has its own exit status for an incomplete run.
        Command::Submit(a) => submit_command(a).await,
        other => run_command(other).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn submit_command(a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let opts = submit::SubmitOptions {
        file: a.file,
        report: a.report,
        endpoint: a.endpoint,
        ca: a.ca,
        cert: a.cert,
        key: a.key,
        domain: a.domain,
        batch_size: a.batch_size as usize,
        window: a.window as usize,
        progress: !a.quiet,
        compress: !a.no_compress,
        from_line: usize::try_from(a.from_line).unwrap_or(usize::MAX),
    };
    let summary = submit::run(&opts, stop_requests()).await?;
    submit::print_summary(&summary);
    Ok(if summary.complete() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INCOMPLETE)
    })
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            print_config,
        } => {
            let config = config::Config::load(&config)?;
            if print_config {
                cli::print_out(format_args!("{}", config.redacted_toml()));
                return Ok(());
            }
            telemetry::init_as(config.logging.format);
            // Signals are caught from before the gateway says it is ready.
            let stop = app::stop_signal();
            let gateway = app::Gateway::start(config).await?;
            // Machine-readable lines for scripts and tests that start on port 0, in one
            // write.
            let mut ready = format!("listening on {}", gateway.addr);
            if let Some(sim) = &gateway.backend_sim {
                ready.push_str(&format!("\nbackend simulator on {}", sim.addr));
            }
            if let Some(ops) = gateway.ops_addr {
                ready.push_str(&format!("\noperations on {ops}"));
            }
            cli::ready_line(&ready);
            gateway.run_until(stop).await
        }
        Command::Certs(a) => certs::run(a),
        Command::Submit(a) => submit_command(a).await.map(drop),
        Command::BackendSim { action } => match action {
            SimAction::Serve {
                listen,
                database_url,
                tls,
                gateway_identities,
            } => {
                telemetry::init();
                let sim = oip_gateway::backend_sim::BackendSim::start(
                    oip_gateway::backend_sim::SimConfig {
                        listen,
                        database_url,
                        ca: tls.ca,
                        cert: tls.cert,
                        key: tls.key,
                        also_trust: None,
                        delivery_identities: gateway_identities,
                    },
                )
                .await?;
                cli::ready_line(&format!("listening on {}", sim.addr));
                tokio::signal::ctrl_c().await?;
                sim.shutdown().await
            }
            SimAction::Stats { client } => {
                let s = sim_control(&client)
                    .await?
                    .stats(oip_gateway::proto::StatsRequest {})
                    .await
                    .map_err(|s| cli::status_line(&s))?
                    .into_inner();
                for k in &s.applied {
                    oip_gateway::outln!("{:<28} {}", k.kind, k.count);
                }
                oip_gateway::outln!("{:<28} {}", "repeated items dropped", s.repeated_items);
                oip_gateway::outln!("{:<28} {}", "failed calls (injected)", s.failed_calls);
                oip_gateway::outln!("{:<28} {}", "invalid items", s.invalid_items);
                oip_gateway::outln!("{:<28} {}", "answered calls", s.answered_calls);
                if let Some(f) = &s.faults {
                    print_faults(f);
                }
                Ok(())
            }
            SimAction::Faults {
                client,
                fail_fraction,
                latency_ms,
                reject_keys,
                pause,
            } => {
                let f = oip_gateway::proto::Faults {
                    fail_fraction,
                    latency_ms,
                    reject_keys,
                    paused: pause,
                };
                let set = sim_control(&client)
                    .await?
                    .set_faults(f)
                    .await
                    .map_err(|s| cli::status_line(&s))?
                    .into_inner();
                print_faults(&set);
                Ok(())
            }
        },
        Command::Status {
            action,
            connection,
            json,
        } => cli::status::run(action, &connection, json).await,
        Command::Admin { action, connection } => cli::admin::run(action, &connection).await,
        Command::Pull { action, connection } => cli::pull::run(action, &connection).await,
        Command::Load {
            mode,
            in_flight,
            connections,
            seconds,
            records,
            messages,
            workers,
            id_prefix,
            industry,
            division,
            connection,
        } => {
            let opts = cli::load::LoadOptions {
                mode,
                in_flight,
                duration: std::time::Duration::from_secs(seconds),
                records: records.max(1),
                messages,
                workers,
                id_prefix: id_prefix
                    .unwrap_or_else(|| format!("D{}-", oip_gateway::domain::time::now_millis())),
                industry,
                division,
                timeout: std::time::Duration::from_secs(30),
            };
            let mut channels = Vec::new();
            for _ in 0..connections.max(1) {
                channels.push(connection.channel("platform-a").await?);
            }
            let report = cli::load::run(&channels, &opts).await?;
            for line in report.lines() {
                oip_gateway::outln!("{line}");
            }
            Ok(())
        }
        Command::Loadgen {
            workers,
            orders,
            id_prefix,
            seed,
            shape,
            out,
        } => {
            let spec = loadgen::LoadSpec {
                workers: workers.max(1),
                orders,
                start: chrono::NaiveDate::from_ymd_opt(2025, 9, 1).unwrap_or_default(),
                id_prefix,
                seed,
                shape,
            };
            let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
            loadgen::write(&spec, &mut w)?;
            std::io::Write::flush(&mut w)?;
            oip_gateway::outln!(
                "wrote {} workers and {orders} orders to {}",
                spec.workers,
                out.display()
            );
            Ok(())
        }
    }
}

/// Exit status of a `submit` that stopped before every line was answered (the summary
/// says which lines are missing from the report).
const INCOMPLETE: u8 = 3;

/// Counts SIGINT, SIGTERM and SIGHUP (a closed terminal): `submit` stops reading at the
/// first and stops waiting for answers at the second.
fn stop_requests() -> tokio::sync::watch::Receiver<u32> {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let (mut term, mut hangup) = {
            use tokio::signal::unix::{SignalKind, signal};
            (
                signal(SignalKind::terminate()).ok(),
                signal(SignalKind::hangup()).ok(),
            )
        };
        loop {
            #[cfg(unix)]
            let got = tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                Some(()) = async { term.as_mut()?.recv().await } => true,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            #[cfg(not(unix))]
            let got = tokio::signal::ctrl_c().await.is_ok();
            if !got {
                return;
            }
            tx.send_modify(|n| *n += 1);
            if *tx.borrow() == 1 {
                eprintln!(
                    "stopping: waiting for the answers of chunks already sent (again to stop at once)"
                );
            }
        }
    });
    rx
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
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Everything that matters is done; a read still blocked on a pipe (`submit` stopped
    // by a signal) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// The simulator's fault settings, one per line.
fn print_faults(f: &oip_gateway::proto::Faults) {
    oip_gateway::outln!("{:<28} {}", "fault: fail fraction", f.fail_fraction);
    oip_gateway::outln!("{:<28} {}", "fault: latency ms", f.latency_ms);
    oip_gateway::outln!("{:<28} {}", "fault: paused", f.paused);
    oip_gateway::outln!(
        "{:<28} {}",
        "fault: rejected keys",
        if f.reject_keys.is_empty() {
            "none".to_string()
        } else {
            f.reject_keys.join(", ")
        }
    );
}
