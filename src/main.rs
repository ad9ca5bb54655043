//! The `memgate` binary: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use memgate::cli::{self, Cli, Command, LogFormat};

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEMGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colours only for people: journald and `docker logs` get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// mimalloc instead of glibc's malloc: a proxied request allocates and frees
/// a few dozen small objects, and glibc spent about a quarter of all of
/// memgate's instructions on them (measured in bench/results/analysis.md).
/// Built without transparent huge pages (`no_thp`): with them, 100,000 cached
/// tokens held 114 MiB resident instead of 80 (bench/run.sh rss).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve);
    init_logging(cli.log_format, if serving { "info" } else { "warn" });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Documentation needs no configuration: it works before one exists.
    match &cli.command {
        Command::Completions(args) => return print_out(&cli::docs::completions(args)?),
        Command::Man => return print_out(&cli::docs::man()?),
        _ => {}
    }
    let loaded = cli::load_config(&cli)?;
    let config = loaded.config.clone();
    match cli.command {
        Command::CheckConfig(args) => print_out(&cli::check_config(&loaded, &args)),
        Command::UpstreamName(args) => print_out(&cli::upstream_name::run(&config, &args)?),
        Command::Completions(args) => print_out(&cli::docs::completions(&args)?),
        Command::Man => print_out(&cli::docs::man()?),
        // pingora builds its own runtimes, so serve must not run inside one.
        Command::Serve => {
            memgate::access_log::set_enabled(config.log.access);
            memgate::server::run(config)
        }
        Command::Migrate => one_shot(async move {
            cli::open_store(&config, cli::Open::CreateIfMissing).await?;
            Ok("Migrations applied.".to_string())
        }),
        Command::Token(cmd) => one_shot(async move {
            let store = cli::open_store(&config, cli::Open::Existing).await?;
            cli::token::run(store.as_ref(), cmd).await
        }),
        Command::Audit(args) if args.follow => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let store = cli::open_store(&config, cli::Open::Existing).await?;
                let mut stdout = std::io::stdout();
                cli::audit::follow(
                    store.as_ref(),
                    args,
                    &mut stdout,
                    std::time::Duration::from_secs(1),
                )
                .await
            })
        }
        Command::Audit(args) => one_shot(async move {
            let store = cli::open_store(&config, cli::Open::Existing).await?;
            cli::audit::audit(store.as_ref(), args).await
        }),
        Command::Stats(args) => one_shot(async move {
            let store = cli::open_store(&config, cli::Open::Existing).await?;
            cli::audit::stats(store.as_ref(), args).await
        }),
        Command::User(cmd) => one_shot(async move {
            let store = cli::open_store(&config, cli::Open::Existing).await?;
            cli::user::run(store.as_ref(), &config, cmd).await
        }),
    }
}

/// Runs a one-shot command on a small runtime and prints its output.
fn one_shot(fut: impl Future<Output = anyhow::Result<String>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(fut)?;
    print_out(&out)
}

/// Prints a command's output; a closed pipe (`memgate audit | head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
