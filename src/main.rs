//! The `switchyard` binary: serve (the default), or sign a token.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use switchyard::auth::{sign, Claims};
use switchyard::config::{ConfigError, ServeArgs, Settings};
use switchyard::startup::Application;

// jemalloc, not glibc's malloc: less memory per idle connection after a connect storm, same
// throughput (Cargo.toml's `jemalloc` feature says what was measured).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "A self-hosted real-time server")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). Every setting is an environment variable (the usual way) and a flag;
    /// a flag wins over its variable, a variable over the default.
    #[command(after_help = "The log filter is RUST_LOG (env_logger syntax; default: info).")]
    Serve(Box<ServeArgs>),
    /// Serve what the official Engine.IO and Socket.IO protocol test suites expect: an Engine.IO
    /// echo at /engine.io/ and their fixture at /socket.io/ (pingInterval 300, pingTimeout 200,
    /// maxPayload 1000000, connectTimeout 1000), with a throwaway database.
    Conformance {
        /// Port (the suites use 3000).
        #[arg(long, default_value_t = 3000)]
        port: u16,
    },
    /// Print an HS256 token signed with SWITCHYARD_JWT_SECRET.
    Token {
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Room pattern the user may join (repeatable), e.g. 'project:*'.
        #[arg(long = "rooms")]
        rooms: Vec<String>,
        /// Room pattern the user may publish to (repeatable).
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// `admin` or `service`; omit for a plain user.
        #[arg(long)]
        role: Option<String>,
        /// Lifetime in seconds; 0 for a token without expiry.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // A variable set to the empty string counts as unset, as it always has.
    let cmd = Cli::command().mut_subcommand("serve", switchyard::config::empty_env_is_unset);
    let cli = match cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        // A refused setting is reported like every start-up error, naming its variable.
        Err(e) => match ConfigError::from_clap(&e) {
            Some(bad) => return settings_error(&bad),
            None => e.exit(),
        },
    };
    match cli.command {
        None => serve(Settings::from_env(), None),
        Some(Command::Serve(args)) => serve(Settings::from_args(*args), None),
        Some(Command::Conformance { port }) => serve(Settings::from_env(), Some(port)),
        Some(Command::Token {
            sub,
            name,
            rooms,
            publish,
            role,
            ttl,
        }) => {
            let Some(secret) = std::env::var("SWITCHYARD_JWT_SECRET")
                .ok()
                .filter(|s| !s.is_empty())
            else {
                eprintln!("error: SWITCHYARD_JWT_SECRET must be set to sign a token");
                return std::process::ExitCode::from(2);
            };
            if let Some(r) = &role {
                if r != "admin" && r != "service" {
                    eprintln!("error: --role must be `admin` or `service`");
                    return std::process::ExitCode::from(2);
                }
            }
            let exp = (ttl > 0).then(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + ttl
            });
            let claims = Claims {
                sub,
                name,
                rooms,
                publish,
                role,
                exp,
                nbf: None,
            };
            match sign(&secret, &claims) {
                Ok(t) => {
                    println!("{t}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: signing failed: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn settings_error(e: &ConfigError) -> std::process::ExitCode {
    eprintln!("error: {e}");
    std::process::ExitCode::from(2)
}

fn serve(
    settings: Result<Settings, ConfigError>,
    conformance_port: Option<u16>,
) -> std::process::ExitCode {
    let mut settings = match settings {
        Ok(s) => s,
        Err(e) => return settings_error(&e),
    };
    if let Some(port) = conformance_port {
        use std::time::Duration;
        settings.port = port;
        settings.conformance = true;
        // One worker, so concurrent requests of one client are handled in arrival order, as
        // by the single-threaded reference server the suites were written against.
        settings.workers = 1;
        settings.sio_ping_interval = Duration::from_millis(300);
        settings.sio_ping_timeout = Duration::from_millis(200);
        settings.sio_max_payload = 1_000_000;
        settings.sio_connect_timeout = Duration::from_millis(1_000);
        let db =
            std::env::temp_dir().join(format!("switchyard-conformance-{}.db", std::process::id()));
        settings.database =
            switchyard::config::DatabaseUrl::Sqlite(db.to_string_lossy().into_owned());
    }
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        app.run_until_stopped().await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
