//! The `switchyard` command line: `serve` (everything), `gateway`, `router`, `check-config`,
//! `redact`, `dead-letters`.
//! The binary is a one-line wrapper around [`main`], so tests can build their own copy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::config::{BusKind, LogFormat, Settings, StoreKind};
use switchyard_router::{App, Role};
use tracing_subscriber::EnvFilter;

/// Omnichannel message routing for customer service.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process (with no config: the embedded default on 127.0.0.1:8080).
    Serve(RunArgs),
    /// Run only the gateway: channel ingress, WebSockets, REST, outbound senders.
    Gateway(RunArgs),
    /// Run only the router: inbound shard consumers.
    Router(RunArgs),
    /// Validate a configuration file and explain what is wrong.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Also connect to the RabbitMQ and Redis it names, and check what Switchyard needs of
        /// them (exit code 1 when they cannot serve).
        #[arg(long)]
        connect: bool,
    },
    /// Show what a channel's redaction rules (`[redaction]`, the channel's `redact`) make of a
    /// text, without running anything: one JSON object per text, `{"text", "redactions":
    /// {rule: matches}}`.
    Redact {
        /// Configuration file (TOML).
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: PathBuf,
        /// The channel whose rules apply.
        #[arg(long)]
        channel: String,
        /// The text; without it, each line of standard input is one text.
        #[arg(long)]
        text: Option<String>,
    },
    /// List, replay or discard the dead letters of a deployment on RabbitMQ (`bus.kind =
    /// "amqp"`); prints JSON. With the embedded bus, use `/v1/dead-letters` of the running
    /// `serve` instead.
    DeadLetters {
        /// Configuration file (TOML), for `bus.url` and its TLS files.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// List the dead letters, oldest first (at most `--limit`, default 50).
    List(Choose),
    /// Put the chosen dead letters back into the queues they came from.
    Replay(Choose),
    /// Remove the chosen dead letters for good.
    Discard(Choose),
}

/// Which dead letters: those matching every option given.
#[derive(Debug, clap::Args)]
struct Choose {
    /// Only this message id (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Only those that came from this queue, e.g. `switchyard.inbound.3`.
    #[arg(long)]
    queue: Option<String>,
    /// Only those whose reason contains this text.
    #[arg(long)]
    reason_contains: Option<String>,
    /// Replay or discard every dead letter (needed when no other option chooses).
    #[arg(long)]
    all: bool,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Configuration file (TOML). Every key can be overridden by `SWITCHYARD__SECTION__KEY`.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Parses the command line and runs the command; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, connect } => check_config(&file, connect),
        Command::DeadLetters { config, action } => dead_letters(config.as_deref(), action),
        Command::Redact {
            config,
            channel,
            text,
        } => redact(&config, &channel, text),
        Command::Serve(args) => run(args, Role::All),
        Command::Gateway(args) => run(args, Role::Gateway),
        Command::Router(args) => run(args, Role::Router),
    }
}

fn check_config(file: &std::path::Path, connect: bool) -> ExitCode {
    let result = Settings::load(Some(file))
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            Registry::build(&settings.channels, &ConnectorContext::default())?;
            settings.api_keys()?;
            if settings.bus.kind == BusKind::Amqp {
                settings.bus.tls_files().read()?;
            }
            if settings.store.kind == StoreKind::Redis {
                settings.store.tls_files().read()?;
            }
            Ok(settings)
        });
    match result {
        Ok(settings) => {
            println!(
                "{}: OK ({} channel(s), pools: {}, {} routing rule(s), {} bot(s), {} webhook(s))",
                file.display(),
                settings.channels.len(),
                settings.pool_ids().join(", "),
                settings.routes.len(),
                settings.bots.len(),
                settings.webhooks.len()
            );
            if !connect {
                return ExitCode::SUCCESS;
            }
            let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
                return ExitCode::FAILURE;
            };
            if runtime.block_on(check_services(&settings)) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{}: {e:#}", file.display());
            ExitCode::from(2)
        }
    }
}

/// `redact`: prints what `channel`'s redaction rules make of `text`, or of each line of standard
/// input; exit code 2 for a configuration it cannot load or a channel it does not define.
fn redact(config: &std::path::Path, channel: &str, text: Option<String>) -> ExitCode {
    use std::io::BufRead;
    use switchyard_core::redaction::Redaction;

    let redaction = Settings::load(Some(config))
        .map_err(anyhow::Error::from)
        .and_then(|settings| {
            anyhow::ensure!(
                settings.channels.iter().any(|c| c.id == channel),
                "channel `{channel}` is not in the configuration"
            );
            Ok(Redaction::from_settings(&settings)?)
        });
    let redaction = match redaction {
        Ok(redaction) => redaction,
        Err(e) => {
            eprintln!("{}: {e:#}", config.display());
            return ExitCode::from(2);
        }
    };
    let redactor = redaction.for_channel(channel);
    if redactor.is_none() {
        eprintln!("channel `{channel}` redacts nothing");
    }
    let show = |text: &str| {
        let (text, found) = match redactor.and_then(|r| r.redact_text(text)) {
            Some((redacted, found)) => (redacted, found),
            None => (text.to_owned(), Default::default()),
        };
        let redactions: serde_json::Map<String, serde_json::Value> = found
            .iter()
            .map(|(rule, n)| (rule.to_owned(), n.into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({"text": text, "redactions": redactions})
        );
    };
    match text {
        Some(text) => show(&text),
        None => {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(line) => show(&line),
                    Err(e) => {
                        eprintln!("cannot read standard input: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}

/// `check-config --connect`: connects to the configured RabbitMQ and Redis and says, a line each,
/// what it found; whether both can serve.
async fn check_services(settings: &Settings) -> bool {
    use switchyard_core::bus::topology::DEAD_LETTER_QUEUE;
    use switchyard_core::bus::{Bus, BusError};
    use switchyard_core::store::redis::server::Severity;

    let mut usable = true;
    match settings.bus.kind {
        BusKind::Embedded => println!("bus: embedded (in-process): nothing to connect to"),
        BusKind::Amqp => match switchyard_router::app::connect_amqp(settings, "check").await {
            Err(e) => {
                println!("bus: error: cannot connect to RabbitMQ (bus.url): {e:#}");
                usable = false;
            }
            Ok(bus) => match bus.ready_messages(DEAD_LETTER_QUEUE).await {
                Ok(n) => println!(
                    "bus: RabbitMQ: connected; the topology is declared ({n} dead letter(s) waiting)"
                ),
                Err(BusError::NotDeclared { .. }) => println!(
                    "bus: RabbitMQ: connected; the topology is not declared yet (each process \
                     declares it at start, which needs the configure permission on the vhost)"
                ),
                Err(e) => {
                    println!("bus: error: RabbitMQ: {e}");
                    usable = false;
                }
            },
        },
    }
    match settings.store.kind {
        StoreKind::Embedded => println!("store: embedded (in-process): nothing to connect to"),
        StoreKind::Redis => match switchyard_router::app::connect_redis(settings).await {
            Err(e) => {
                println!("store: error: cannot connect to Redis: {e:#}");
                usable = false;
            }
            Ok(store) => match store.server_info().await {
                Err(e) => println!(
                    "store: Redis: connected; warning: its INFO could not be read ({e}), so its \
                     version and settings are not checked"
                ),
                Ok(info) => {
                    println!("store: Redis {}: connected", info.version);
                    for finding in info.findings() {
                        usable &= finding.severity != Severity::Error;
                        println!("store: {finding}");
                    }
                }
            },
        },
    }
    usable
}

/// `switchyard dead-letters`: prints the listing or what was done as JSON; exit code 1 when the
/// operation failed, 2 when the configuration is wrong.
fn dead_letters(config: Option<&std::path::Path>, action: DeadLetterAction) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) if s.bus.kind == BusKind::Amqp => s,
        Ok(_) => {
            eprintln!(
                "switchyard: the embedded bus keeps its dead letters inside the `serve` process: \
                 use GET /v1/dead-letters there, or configure bus.kind = \"amqp\""
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run_dead_letters(&settings, action)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dead_letters(settings: &Settings, action: DeadLetterAction) -> anyhow::Result<String> {
    use switchyard_router::dead_letters::{DeadLetters, MAX_SCAN, Selection};

    let bus = switchyard_router::app::connect_amqp(settings, "dead-letters").await?;
    let metrics = switchyard_core::metrics::Metrics::new()?;
    let dead_letters = DeadLetters::new(std::sync::Arc::new(bus), metrics);
    let selection = |choose: &Choose| Selection {
        message_ids: (!choose.ids.is_empty()).then(|| choose.ids.clone()),
        queue: choose.queue.clone(),
        reason_contains: choose.reason_contains.clone(),
        all: choose.all,
    };
    let json = match action {
        DeadLetterAction::List(choose) => {
            let chosen = Selection {
                all: true,
                ..selection(&choose)
            };
            let limit = choose.limit.unwrap_or(50).min(MAX_SCAN);
            serde_json::to_string_pretty(&dead_letters.list(&chosen, limit).await?)?
        }
        DeadLetterAction::Replay(choose) => {
            let limit = choose.limit.unwrap_or(MAX_SCAN).min(MAX_SCAN);
            serde_json::to_string_pretty(&dead_letters.replay(&selection(&choose), limit).await?)?
        }
        DeadLetterAction::Discard(choose) => {
            let limit = choose.limit.unwrap_or(MAX_SCAN).min(MAX_SCAN);
            serde_json::to_string_pretty(&dead_letters.discard(&selection(&choose), limit).await?)?
        }
    };
    Ok(json)
}

/// The async runtime `builder` describes, with I/O and timers; `None` (said on stderr) when it
/// cannot start.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("switchyard: cannot start the async runtime: {e}");
            None
        }
    }
}

fn load(args: &RunArgs) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        settings.server.listen = listen;
        settings.validate()?;
    }
    Ok(settings)
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},lapin=warn", settings.log.level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log.format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}

fn run(args: RunArgs, role: Role) -> ExitCode {
    let settings = match load(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings);
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(serve(settings, role, args.config.is_none())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "switchyard stopped");
            eprintln!("switchyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, role: Role, embedded_default: bool) -> anyhow::Result<()> {
    let app = App::start(settings, role).await?;
    // This process ends when the app stops.
    app.exit_after_stop();
    if let Some(addr) = app.addr {
        tracing::info!(%addr, ?role, "switchyard is listening");
        if embedded_default || role == Role::All {
            println!("Switchyard is running on http://{addr}");
            println!("  web chat:      http://{addr}/");
            println!("  agent console: http://{addr}/agent");
        }
    }
    let stop = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; draining");
        stop.cancel();
    });
    app.run().await.context("switchyard failed")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
