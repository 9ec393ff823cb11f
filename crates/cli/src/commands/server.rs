//! `shadowcopy server`: run the backup server (central catalog in PostgreSQL, agents
//! over mutual TLS); `server enroll HOST`, `server revoke HOST`, `server token create
//! NAME` and `server token revoke NAME`: the administrator's commands on the server's
//! machine (they use its database and CA directly).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use shadowcopy_engine::HumanDuration;
use shadowcopy_server::auth::Role;
use shadowcopy_server::ServerOptions;

use crate::GlobalArgs;

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// The central catalog: a PostgreSQL URL (postgresql://USER@HOST/DB, or
    /// postgresql:///DB?host=/run/postgresql for a local socket)
    #[arg(
        long,
        env = "SHADOWCOPY_SERVER_DATABASE",
        value_name = "URL",
        global = true
    )]
    pub database: Option<String>,
    /// Where the server's CA lives [default: /var/lib/shadowcopy-server as root, else
    /// $XDG_DATA_HOME/shadowcopy-server]
    #[arg(
        long,
        env = "SHADOWCOPY_SERVER_STATE",
        value_name = "DIR",
        global = true
    )]
    pub state: Option<PathBuf>,
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// A name (DNS name or address) agents and operators reach the server by; its
    /// certificate carries each (repeat; default: this machine's name, localhost,
    /// 127.0.0.1 and the listen address)
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// How long a claimed job stays its agent's without a heartbeat (then it is lost)
    #[arg(long, value_name = "DURATION", value_parser = shadowcopy_engine::parse_duration, default_value = "60s")]
    pub job_lease: HumanDuration,
    /// How long the certificates signed for agents are valid; each agent renews its own
    /// two thirds of the way through
    #[arg(long, value_name = "DURATION", value_parser = shadowcopy_engine::parse_duration, default_value = "397days")]
    pub agent_cert_lifetime: HumanDuration,
}

#[derive(Subcommand, Debug)]
pub enum ServerCommand {
    /// Make a one-time token for HOST to enrol with (`shadowcopy agent --server URL
    /// --enroll-token TOKEN`)
    Enroll {
        host: String,
        /// How long the token is valid
        #[arg(long, value_name = "DURATION", value_parser = shadowcopy_engine::parse_duration, default_value = "1h")]
        ttl: HumanDuration,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Cut HOST off at once: its certificate and unused tokens stop working, its
    /// queued jobs are cancelled (its copies stay listed)
    Revoke { host: String },
    /// Operators' API tokens (for `--server`)
    #[command(subcommand)]
    Token(TokenCommand),
    /// The web console's accounts (its pages are at https://SERVER:PORT/console/)
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Make an account; its password is read from standard input (asked for, unechoed,
    /// at a terminal), at least 12 characters
    Create {
        name: String,
        /// viewer: read; operator: also create copies, restore, cancel jobs; admin: also
        /// enrol and revoke hosts
        #[arg(long, default_value = "operator", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// Disable an account and end its sessions
    Disable { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make an API token; it is printed once (only its hash is kept)
    Create {
        name: String,
        /// viewer: read; operator: also queue jobs (restores, deletions); admin: also
        /// enrol and revoke hosts, read the audit log
        #[arg(long, default_value = "operator", value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Print as JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token by name
    Revoke { name: String },
}

impl ServerArgs {
    pub fn is_daemon(&self) -> bool {
        self.command.is_none()
    }

    pub fn json(&self) -> bool {
        matches!(
            self.command,
            Some(ServerCommand::Enroll { json: true, .. })
                | Some(ServerCommand::Token(TokenCommand::Create {
                    json: true,
                    ..
                }))
        )
    }

    fn options(&self) -> anyhow::Result<ServerOptions> {
        let database = self.database.clone().ok_or_else(|| {
            shadowcopy_engine::UsageError::new(
                "the server needs its database: --database URL (or SHADOWCOPY_SERVER_DATABASE), e.g. postgresql:///shadowcopy?host=/run/postgresql",
            )
        })?;
        let state_dir = match &self.state {
            Some(dir) => std::path::absolute(dir)?,
            None if rustix::process::geteuid().is_root() => {
                PathBuf::from(shadowcopy_server::SYSTEM_STATE_DIR)
            }
            None => std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .ok_or_else(|| {
                    anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set; give --state DIR")
                })?
                .join("shadowcopy-server"),
        };
        let mut names = self.names.clone();
        if names.is_empty() {
            names.push(shadowcopy_agent::link::identity::this_host());
            names.push("localhost".into());
            names.push("127.0.0.1".into());
            let listen = self.listen.ip().to_string();
            if !self.listen.ip().is_unspecified() && !names.contains(&listen) {
                names.push(listen);
            }
        }
        Ok(ServerOptions {
            database,
            state_dir,
            listen: self.listen,
            names,
            job_lease: self.job_lease.0,
            agent_cert_lifetime: self.agent_cert_lifetime.0,
        })
    }
}

pub fn run(g: &GlobalArgs, args: ServerArgs) -> anyhow::Result<()> {
    let out = g.output(args.json());
    let options = args.options()?;
    match &args.command {
        None => shadowcopy_server::run(&options),
        Some(ServerCommand::Enroll { host, ttl, .. }) => {
            let token = shadowcopy_server::enroll_token(&options, host, ttl.0)?;
            if out.json {
                return out.print_json(&serde_json::json!({
                    "host": host, "token": token, "expires_in_secs": ttl.0.as_secs()
                }));
            }
            if out.quiet {
                println!("{token}");
                return Ok(());
            }
            println!(
                "one-time enrolment token for `{host}`, valid for {}:",
                humantime::format_duration(ttl.0)
            );
            println!("{token}");
            println!("on {host}: shadowcopy agent --server https://THIS-SERVER:PORT --enroll-token TOKEN --host-name {host}");
            Ok(())
        }
        Some(ServerCommand::Revoke { host }) => {
            shadowcopy_server::revoke(&options, host)?;
            if !out.quiet {
                println!("host `{host}` revoked: its agent is refused from now on");
            }
            Ok(())
        }
        Some(ServerCommand::Token(TokenCommand::Create { name, role, .. })) => {
            let role = Role::parse(role).expect("clap checked the role");
            let token = shadowcopy_server::create_token(&options, name, role)?;
            if out.json {
                return out.print_json(&serde_json::json!({
                    "name": name, "role": role.as_str(), "token": token
                }));
            }
            if out.quiet {
                println!("{token}");
                return Ok(());
            }
            println!(
                "API token `{name}` ({}); it is shown only now:",
                role.as_str()
            );
            println!("{token}");
            println!("use it as: SHADOWCOPY_SERVER_TOKEN=TOKEN shadowcopy --server https://THIS-SERVER:PORT hosts");
            Ok(())
        }
        Some(ServerCommand::User(UserCommand::Create { name, role })) => {
            let role = Role::parse(role).expect("clap checked the role");
            let password = read_password(&format!("password for {name}: "))?;
            shadowcopy_server::create_user(&options, name, &password, role)?;
            if !out.quiet {
                println!("console account `{name}` ({}) made", role.as_str());
            }
            Ok(())
        }
        Some(ServerCommand::User(UserCommand::Disable { name })) => {
            shadowcopy_server::disable_user(&options, name)?;
            if !out.quiet {
                println!("console account `{name}` disabled; its sessions ended");
            }
            Ok(())
        }
        Some(ServerCommand::Token(TokenCommand::Revoke { name })) => {
            shadowcopy_server::revoke_token(&options, name)?;
            if !out.quiet {
                println!("API token `{name}` revoked");
            }
            Ok(())
        }
    }
}

/// A line of standard input, without its line end; at a terminal, asked for with
/// `prompt` and not echoed.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
        let saved = tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
        Some(saved)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = tcsetattr(&stdin, OptionalActions::Now, &saved);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
