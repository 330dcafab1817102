//! The `wasmgate` command line: `serve` runs the gateway, `check` validates a
//! config, `filter …` are the filter author's tools ([`crate::toolkit`]).
//! The binary's `main` is one call to [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use crate::Gateway;
use crate::config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "A WebAssembly-extensible API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Validate a config (including compiling its filters and running each
    /// route's filter `init`), print every problem, exit non-zero if any.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Tools for filter authors, with no gateway running.
    Filter {
        #[command(subcommand)]
        command: FilterCommand,
    },
}

#[derive(Subcommand)]
enum FilterCommand {
    /// Say what a filter component is: the contract it targets, whether
    /// this gateway loads it, its imports (and any it would refuse), its
    /// size and memories, and what it declares at `init` with a config.
    Inspect {
        /// The component.
        filter: PathBuf,
        /// The config handed to its `init` (JSON), as a route would.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also time its load (compiled, and from the compile cache) and a
        /// new instance with its `init`.
        #[arg(long)]
        timings: bool,
    },
    /// Run a filter offline on the cases of a TOML file (requests, upstream
    /// answers, canned outbound answers, expectations), on the gateway's
    /// own filter engine, with no gateway and no network. Exit code 0 when
    /// every expectation holds, 1 when one does not, 2 when the file or
    /// the filter cannot be used.
    Test {
        /// The component.
        filter: PathBuf,
        /// The test file.
        cases: PathBuf,
        /// Run only the case with this name (the cases before it are not
        /// run, so host state they would leave, a `kv` entry or a
        /// rate-limit bucket, is not there).
        #[arg(long)]
        case: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make a filter project that builds as it is, against the contract
    /// this gateway serves (embedded in the binary).
    New {
        /// The filter's name (lower-case letters, digits and '-').
        name: String,
        /// The language: `rust`, `c`, `python` or `js`.
        #[arg(long)]
        lang: String,
        /// The folder to make (default: NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write the contract this gateway serves (`filter.wit`), for
    /// toolchains that read WIT themselves (componentize-py,
    /// componentize-js, wit-bindgen).
    Wit {
        /// The folder to write it in.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write bindings for the contract this gateway serves, for a language
    /// whose toolchain cannot read WIT itself (C).
    Bindings {
        /// The language: `c`.
        #[arg(long)]
        lang: String,
        /// The folder to write them in.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a core WebAssembly module built against the bindings a
    /// component the gateway loads (with the WASI adapter this gateway's
    /// wasmtime matches).
    Componentize {
        /// The core module.
        core: PathBuf,
        /// The component to write.
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// The log filter: `WASMGATE_LOG` (tracing's `EnvFilter` syntax), default
/// `info`. rustls logs a warning for each handshake a client gets slightly
/// wrong (an IP address sent as SNI, for one), which would let any client
/// write a log line per connection; it is held to errors unless the
/// directive names `rustls` itself.
fn log_filter(directive: Option<&str>) -> tracing_subscriber::EnvFilter {
    let given = directive
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or("info");
    let full = if given.contains("rustls") {
        given.to_owned()
    } else {
        format!("{given},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(&full).unwrap_or_else(|e| {
        eprintln!("WASMGATE_LOG={given:?} is not a valid filter ({e}); using \"info\"");
        tracing_subscriber::EnvFilter::new("info,rustls=error")
    })
}

/// Parses the command line, runs the command, and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The filter tools print their own results: only warnings are logged.
    let default_log = match &cli.command {
        Command::Filter { .. } => Some("warn".to_owned()),
        _ => None,
    };
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(
            std::env::var("WASMGATE_LOG")
                .ok()
                .or(default_log)
                .as_deref(),
        ))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = match &cli.command {
        Command::Check { config } | Command::Serve { config } => config.clone(),
        Command::Filter { command } => return filter(command),
    };
    // Sockets passed by socket activation are taken now, before any thread
    // exists (taking them clears `LISTEN_FDS` from the environment).
    let inherited = match &cli.command {
        Command::Serve { .. } => match crate::gateway::Inherited::from_env() {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: the sockets passed in LISTEN_FDS are not TCP listeners: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Check { .. } | Command::Filter { .. } => Default::default(),
    };
    // The config is read before the runtime exists, because it says how many
    // worker threads to start; errors are reported here and again never.
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Several workers (the default: one per CPU), when serving:
    // thread-per-core, one current-thread runtime per worker, each
    // accepting on a listener of its own, and a current-thread runtime on
    // this thread for the control plane (admin API, reloads, health
    // checks). Started before the gateway is built, whose upstream pools
    // are sized by them. One worker: a current-thread runtime serves
    // everything (no cross-thread wake-up either). `check`: a small
    // multi-threaded runtime.
    let workers = config.server.workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let serving = matches!(cli.command, Command::Serve { .. });
    let pool = if serving && workers > 1 {
        match wasmgate_proxy::workers::Workers::start(workers) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("error: cannot start {workers} worker threads: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let mut builder = if serving {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers.clamp(1, 4));
        b
    };
    builder.enable_all().thread_name(if pool.is_some() {
        "wasmgate-control"
    } else {
        "wasmgate-worker"
    });
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handles = pool
        .as_ref()
        .map(|p| p.handles().to_vec())
        .unwrap_or_default();
    let code = runtime.block_on(async {
        match cli.command {
            Command::Check { .. } => check(&path, config).await,
            Command::Serve { .. } => serve(&path, config, inherited, handles).await,
            Command::Filter { .. } => unreachable!("answered above"),
        }
    });
    // After the drain: what is left on the workers is dropped with them.
    drop(pool);
    code
}

/// `wasmgate filter …`, on a runtime of its own.
fn filter(command: &FilterCommand) -> ExitCode {
    // The runner makes a runtime of its own (one thread, where its log
    // capture is the default subscriber).
    if let FilterCommand::Test {
        filter,
        cases,
        case,
        json,
    } = command
    {
        return crate::filter_test::run(filter, cases, *json, case.as_deref());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match command {
            FilterCommand::Inspect {
                filter,
                config,
                json,
                timings,
            } => crate::toolkit::inspect(filter, config, *json, *timings).await,
            FilterCommand::New { name, lang, dir } => {
                let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
                match crate::toolkit::new_filter(name, lang, &dir) {
                    Ok(files) => {
                        for f in files {
                            println!("wrote {}", f.display());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            FilterCommand::Wit { out } => {
                let path = out.join("filter.wit");
                match std::fs::create_dir_all(out)
                    .and_then(|()| std::fs::write(&path, crate::toolkit::CONTRACT_WIT))
                {
                    Ok(()) => {
                        println!("wrote {}", path.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {}: {e}", path.display());
                        ExitCode::FAILURE
                    }
                }
            }
            FilterCommand::Bindings { lang, out } => {
                if lang != "c" {
                    eprintln!(
                        "error: bindings are written for c only (--lang {lang:?}); Rust, Python \
                         and JavaScript toolchains read the WIT themselves"
                    );
                    return ExitCode::FAILURE;
                }
                match crate::toolkit::bindings_c(out) {
                    Ok(files) => {
                        for f in files {
                            println!("wrote {}", f.display());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            FilterCommand::Test { .. } => unreachable!("run above"),
            FilterCommand::Componentize { core, output } => {
                match crate::toolkit::componentize(core, output) {
                    Ok(n) => {
                        println!("wrote {} ({n} bytes)", output.display());
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

async fn check(path: &std::path::Path, config: Config) -> ExitCode {
    let tenants: Vec<String> = config.tenants.keys().cloned().collect();
    let checked = Gateway::check(config).await.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    });
    match checked {
        Ok(g) => {
            let c = g.config();
            // A tenant whose filters did not load is left out of a start
            // (and logged); a check fails on it.
            let refused: Vec<&String> = tenants
                .iter()
                .filter(|t| !c.tenants.contains_key(*t))
                .collect();
            if !refused.is_empty() {
                for t in refused {
                    eprintln!("error: tenant {t:?} was refused (its errors are logged above)");
                }
                return ExitCode::FAILURE;
            }
            let tenants = if c.tenants.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = c.tenants.keys().map(String::as_str).collect();
                format!("; {} tenants: {}", names.len(), names.join(", "))
            };
            println!(
                "{}: ok ({} routes, {} clusters, {} filters{tenants})",
                path.display(),
                c.routes.len(),
                c.clusters.len(),
                c.filters.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn serve(
    path: &std::path::Path,
    config: Config,
    inherited: crate::gateway::Inherited,
    workers: Vec<tokio::runtime::Handle>,
) -> ExitCode {
    let built = if inherited.proxy.is_some() {
        Gateway::build_taking_over(config).await
    } else {
        Gateway::build(config).await
    };
    let gateway = match built {
        Ok(g) => g.with_inherited(inherited).with_workers(workers),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Watch for signals before saying "listening": a SIGTERM that arrives
    // right after must stop the gateway gracefully, not kill it.
    let stop = stop_signal();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot watch SIGHUP ({e}); reload through the admin API only");
            None
        }
    };
    let running = match gateway.start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => None } } => {
                // SIGHUP: re-read the file; a bad one is logged (with every
                // error) and the running config stays.
                tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
                // In its own task, so this loop keeps listening for the stop
                // signal while the new config builds.
                let (live, path) = (running.live().clone(), path.to_owned());
                tokio::spawn(async move { live.reload_from(&path).await });
            }
        }
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
    // A second stop signal does not wait for the drain.
    let again = stop_signal();
    tokio::select! {
        () = running.shutdown() => {}
        () = again => {
            tracing::warn!("second stop signal: exiting without waiting for the drain");
            return ExitCode::FAILURE;
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Installs the SIGTERM handler now; the future resolves on SIGTERM or Ctrl-C.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    async move {
        let mut term = match term {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn rustls_is_held_to_errors_unless_named() {
        for given in [None, Some(""), Some("warn"), Some("debug,wasmgate=trace")] {
            let f = log_filter(given).to_string();
            assert!(f.contains("rustls=error"), "{given:?} → {f}");
        }
        let f = log_filter(Some("info,rustls=debug")).to_string();
        assert!(
            f.contains("rustls=debug") && !f.contains("rustls=error"),
            "{f}"
        );
    }
}
