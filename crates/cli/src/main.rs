//! The `shadowcopy` binary: parses the command line into a validated request, runs one
//! subcommand, and maps errors to the documented exit codes (see README).

mod commands;
mod errors;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "shadowcopy",
    version,
    about = "Application-consistent point-in-time copies of running databases: verified, and restored in seconds",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Catalog directory [default: /var/lib/shadowcopy as root, else $XDG_DATA_HOME/shadowcopy]
    #[arg(
        long,
        global = true,
        env = "SHADOWCOPY_CATALOG",
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub catalog: Option<PathBuf>,
    /// Config file [default: /etc/shadowcopy/config.toml when it exists]
    #[arg(
        long,
        global = true,
        env = "SHADOWCOPY_CONFIG",
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,
    /// More detail (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = "Global options")]
    pub verbose: u8,
    /// Print only errors
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// A backup server: `list`, `create`, `restore` and `jobs` with --host, and `hosts`,
    /// go through it (the API token from SHADOWCOPY_SERVER_TOKEN); `agent` enrols with
    /// it or checks it is the one enrolled with
    #[arg(
        long,
        global = true,
        env = "SHADOWCOPY_SERVER",
        value_name = "URL",
        help_heading = "Global options"
    )]
    pub server: Option<String>,
    /// Read the backup server's API token from FILE (instead of SHADOWCOPY_SERVER_TOKEN)
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help_heading = "Global options"
    )]
    pub server_token_file: Option<PathBuf>,
}

impl GlobalArgs {
    /// The catalog and config these options name.
    pub fn engine_options(&self) -> shadowcopy_engine::EngineOptions {
        shadowcopy_engine::EngineOptions {
            catalog: self.catalog.clone(),
            config: self.config.clone(),
        }
    }

    /// The engine on the catalog and config these options name.
    pub fn engine(&self) -> anyhow::Result<shadowcopy_engine::Engine> {
        shadowcopy_engine::Engine::new(&self.engine_options())
    }

    /// How a command prints: JSON (`json`), quiet, or text for people.
    pub fn output(&self, json: bool) -> output::Output {
        output::Output {
            json,
            quiet: self.quiet,
            verbose: self.verbose,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole workflow on a sample SQLite bank: copy under load, verify, damage, restore
    Quickstart(commands::quickstart::QuickstartArgs),
    /// Take a shadow copy of a set (named in the config) or of one SQLite database
    Create(Box<commands::create::CreateArgs>),
    /// List copies
    List(commands::list::ListArgs),
    /// Show one copy: phases with timings, components, files, verification
    Show(commands::show::ShowArgs),
    /// Check a copy's integrity and record the result
    Verify(commands::verify::VerifyArgs),
    /// Restore a copy in place (keeping the current state as a pre-restore copy) or elsewhere
    Restore(commands::restore::RestoreArgs),
    /// Delete copies by id, age or count
    Delete(commands::delete::DeleteArgs),
    /// Open a copy read-only beside production (PostgreSQL as a paused standby on a private
    /// socket, SQLite as a read-only file) and print how to connect
    Expose(commands::expose::ExposeArgs),
    /// The copies opened by `expose`
    Exposed(commands::expose::ExposedArgs),
    /// Close an exposure (stop its server, remove its scratch clone)
    Unexpose(commands::expose::UnexposeArgs),
    /// Pull rows of one table out of a copy (exposed for the time it takes), as SQL that
    /// the database's client loads into production, or as CSV
    Extract(commands::expose::ExtractArgs),
    /// List writer kinds and the writers of the configured sets, with their state
    Writers(commands::writers::WritersArgs),
    /// List providers and whether each can serve the given paths (and why not)
    Providers(commands::providers::ProvidersArgs),
    /// PostgreSQL: WAL archive commands for archive_command/restore_command, setup
    Pg(commands::pg::PgArgs),
    /// MariaDB: the binary log chain after a copy (log-analysis)
    Mariadb(commands::mariadb::MariadbArgs),
    /// Run the configured sets on their schedules (copy, prune, verify) until stopped, with
    /// an API on a unix socket; `agent status` asks the running agent what it is doing
    Agent(commands::agent::AgentArgs),
    /// What the agent ran and how each job ended (with --server: the server's jobs)
    Jobs(commands::agent::JobsArgs),
    /// Run the backup server (central catalog in PostgreSQL; agents connect out to it
    /// with mutual TLS), or, on its machine, enrol and revoke hosts and make API tokens
    Server(commands::server::ServerArgs),
    /// The hosts a backup server manages (with --server)
    Hosts(commands::remote::HostsArgs),
    /// The schedules and retention a backup server holds for its hosts' sets (with --server)
    Policy(commands::policy::PolicyArgs),
    /// Copies kept off the host: an encrypted, incremental repository on S3 or a directory
    Archive(commands::archive::ArchiveArgs),
}

impl Command {
    /// Whether the subcommand was asked for JSON (`--json`): its error, if it fails, is
    /// then printed as a JSON object on stdout too.
    fn json(&self) -> bool {
        match self {
            Command::Quickstart(_) => false,
            Command::Create(a) => a.json,
            Command::List(a) => a.json,
            Command::Show(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Restore(a) => a.json,
            Command::Delete(a) => a.json,
            Command::Expose(a) => a.json,
            Command::Exposed(a) => a.json,
            Command::Unexpose(a) => a.json,
            Command::Extract(_) => false,
            Command::Writers(a) => a.json,
            Command::Providers(a) => a.json,
            Command::Pg(a) => a.json(),
            Command::Mariadb(a) => a.json(),
            Command::Agent(a) => a.json(),
            Command::Jobs(a) => a.json,
            Command::Archive(a) => a.json,
            Command::Server(a) => a.json(),
            Command::Hosts(a) => a.json,
            Command::Policy(a) => a.json(),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    let filter = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    // The agent logs what it does (info); as JSON lines when not at a terminal (journald).
    let agent = matches!(&cli.command, Command::Agent(a) if a.is_daemon())
        || matches!(&cli.command, Command::Server(a) if a.is_daemon());
    let filter = if agent && filter == "warn" {
        "info"
    } else {
        filter
    };
    let at_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHADOWCOPY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in logs and captured output.
        .with_ansi(at_terminal);
    if agent && !at_terminal {
        logs.json().init();
    } else {
        logs.init();
    }
    let g = &cli.global;
    let json = cli.command.json();
    let result = match cli.command {
        Command::Quickstart(a) => commands::quickstart::run(g, a),
        Command::Create(a) => commands::create::run(g, *a),
        Command::List(a) => commands::list::run(g, a),
        Command::Show(a) => commands::show::run(g, a),
        Command::Verify(a) => commands::verify::run(g, a),
        Command::Restore(a) => commands::restore::run(g, a),
        Command::Delete(a) => commands::delete::run(g, a),
        Command::Expose(a) => commands::expose::expose(g, a),
        Command::Exposed(a) => commands::expose::exposed(g, a),
        Command::Unexpose(a) => commands::expose::unexpose(g, a),
        Command::Extract(a) => commands::expose::extract(g, a),
        Command::Writers(a) => commands::writers::run(g, a),
        Command::Providers(a) => commands::providers::run(g, a),
        Command::Pg(a) => commands::pg::run(g, a),
        Command::Mariadb(a) => commands::mariadb::run(g, a),
        Command::Agent(a) => commands::agent::run(g, a),
        Command::Jobs(a) => commands::agent::jobs(g, a),
        Command::Archive(a) => commands::archive::run(g, a),
        Command::Server(a) => commands::server::run(g, a),
        Command::Hosts(a) => commands::remote::hosts(g, a),
        Command::Policy(a) => commands::policy::run(g, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut causes = err.chain();
            if let Some(top) = causes.next() {
                eprintln!("error: {top}");
            }
            for cause in causes {
                eprintln!("  because: {cause}");
            }
            if json {
                print_json_error(&errors::JsonError::from_error(&err));
            }
            ExitCode::from(shadowcopy_engine::error::exit_code(&err) as u8)
        }
    }
}

/// A command line clap refused (exit 2; `--help` and `--version` exit 0): its message
/// on stderr, and as a JSON error object on stdout when the arguments ask for `--json`.
fn usage_error(err: &clap::Error) -> ExitCode {
    let code = err.exit_code();
    if err.use_stderr() && asks_for_json(std::env::args_os().skip(1)) {
        print_json_error(&errors::JsonError::from_usage(
            code,
            &err.render().to_string(),
        ));
    }
    // Only a closed stdout or stderr makes printing fail, and then there is no one to tell.
    let _ = err.print();
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}

/// Whether `--json` is among the arguments (before a `--` that ends the options).
fn asks_for_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.take_while(|a| a != "--").any(|a| a == "--json")
}

fn print_json_error(report: &errors::JsonError) {
    match serde_json::to_string_pretty(report) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot print the error as JSON: {e}"),
    }
}
