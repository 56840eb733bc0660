//! `replyd`: one binary for the server (`serve`, `migrate`), the client
//! commands (`submit`, `status`, `result`, `cancel`, `wait`, `worker`) and
//! the benchmarks (`bench`). It only parses arguments, sets up logging and
//! calls library functions.

mod cli;
mod keys;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: glibc's allocator spent a fifth of the submit path's CPU in
/// malloc/free and its arena locks (measured with perf under `replyd bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use replyd_server::config::{Config, Overrides};

#[derive(Parser, Debug)]
#[command(
    name = "replyd",
    version,
    about = "Asynchronous Request-Reply: 202 now, the result later, by any channel."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve(ServerArgs),
    /// Apply pending database migrations and exit.
    Migrate(ServerArgs),
    /// Run the benchmarks and print figures against same-run baselines.
    Bench(Box<replyd_bench::BenchArgs>),
    /// The floor of `bench --scenarios streams`: a bare hyper SSE
    /// broadcaster, run by the bench in its own process.
    #[command(hide = true)]
    BenchFloorSse {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// The attacker of `bench --scenarios exposure`: holds idle
    /// connections, in its own process.
    #[command(hide = true)]
    BenchHold {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        from: std::net::Ipv4Addr,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        h2: bool,
    },
    /// Lease jobs over HTTP and run COMMAND for each.
    Worker(worker::WorkerArgs),
    /// The keys that sign webhook JWTs: generate, list, retire.
    Keys(keys::KeysArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[derive(clap::Args, Debug)]
struct ServerArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "REPLYD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8202].
    #[arg(long, env = "REPLYD_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The SQLite database file [default: ./replyd.db].
    #[arg(long, env = "REPLYD_DB", value_name = "PATH")]
    db: Option<PathBuf>,
    /// A PostgreSQL URL instead of SQLite.
    #[arg(
        long,
        env = "REPLYD_DATABASE_URL",
        value_name = "URL",
        conflicts_with = "db"
    )]
    database_url: Option<String>,
    /// Allow a non-loopback listen address with no API keys.
    #[arg(long, env = "REPLYD_INSECURE")]
    insecure: bool,
}

impl ServerArgs {
    fn config(&self) -> Result<Config, replyd_server::config::ConfigError> {
        Config::load(
            self.config.as_deref(),
            Overrides {
                listen: self.listen,
                sqlite: self.db.clone(),
                postgres_url: self.database_url.clone(),
                insecure: self.insecure.then_some(true),
            },
        )
    }
}

/// Logs to stderr at `default` unless `RUST_LOG` says otherwise. lapin's
/// own logs are off by default: replyd reports broker trouble itself, and
/// lapin logs a returned message whole (its body, which may be a job's
/// result). A log line that cannot be written (stderr a pipe whose reader
/// has gone) is dropped quietly: tracing-subscriber's own report of it
/// goes through `eprintln!`, which panics then, and the panic took the
/// task that waits for SIGTERM with it (the server never drained).
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},lapin=off")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .init();
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a SIGTERM that comes right
/// after the server says it listens drains it instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("replyd: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging("info");
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let listener = match tokio::net::TcpListener::bind(config.listen).await {
                Ok(l) => l,
                Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
            };
            match replyd_server::serve(config, listener, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Migrate(args) => {
            init_logging("info");
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            match replyd_server::open_store(&config).await {
                Ok(_) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench(args) => {
            init_logging("warn");
            match replyd_bench::run(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("{e:#}")),
            }
        }
        Command::BenchFloorSse { listen } => match replyd_bench::streams::serve_floor(listen).await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("{e:#}")),
        },
        Command::BenchHold {
            target,
            from,
            count,
            h2,
        } => match replyd_bench::exposure::hold(target, from, count, h2).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(format!("{e:#}")),
        },
        Command::Keys(args) => {
            init_logging("warn");
            keys::run(args).await
        }
        Command::Worker(args) => {
            init_logging("info");
            let code = cli::exit_code(worker::run(args).await);
            ExitCode::from(u8::try_from(code).unwrap_or(2))
        }
        Command::Client(cmd) => {
            init_logging("warn");
            match cli::run(cmd).await {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(2)),
                Err(e) => fail(format!("{e:#}")),
            }
        }
    }
}
