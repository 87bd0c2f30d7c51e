//! The command line: clap definitions, logging setup and dispatch; one file per subcommand.
//!
//! Exit status: 0 on success, 1 when a command fails (its error printed with its context), 2 for
//! a usage error (clap's own), and for `run`, [`EXIT_CONFIG`] when the config file or a file it
//! names is wrong (`check` exits 1 for the same errors).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::ConfigError;
use crate::proto::identity::{DEFAULT_RSA_BITS, MAX_RSA_BITS, MIN_RSA_BITS};
mod bench;
mod check;
mod completions;
mod demo;
mod fingerprint;
mod keygen;
mod logging;
mod man;
mod run;
mod status;
mod trust;

/// `sealpipe run`'s exit status when the config file, or a key, PSK, peers or known_peers file
/// it names, is wrong: 78, `EX_CONFIG` of sysexits.h. Starting again cannot help, so the
/// systemd unit does not restart on it (`RestartPreventExitStatus=78`).
pub const EXIT_CONFIG: u8 = 78;

/// The heading of the options every subcommand takes (`--log-format`, `--log-level`): listed
/// apart, after each command's own options.
const GLOBAL: &str = "Global options";

/// sealpipe: a transparent encrypting tunnel proxy.
#[derive(Debug, Parser)]
#[command(name = "sealpipe", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true,
          help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// Log level or filter: off, error, warn, info, debug, trace, or directives such as
    /// `info,sealpipe=debug`; overrides RUST_LOG.
    #[arg(long, global = true, value_parser = logging::check_filter, help_heading = GLOBAL)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an RSA key pair: FILE (PKCS#8 PEM, mode 0600) and FILE.pub; print the fingerprint.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Key size in bits (2048 to 8192).
        #[arg(long, default_value_t = DEFAULT_RSA_BITS, value_parser = key_bits)]
        bits: usize,
    },
    /// Print the fingerprint of a private or public key PEM file.
    Fingerprint {
        /// The key file.
        file: PathBuf,
    },
    /// Validate a config file and the keys it names; exit non-zero with a clear message if not.
    ///
    /// Loads the config and every key, PSK and peers file it names, as sealpipe run would.
    /// Then it tries what it can without side effects: each listen address (the tunnels' and
    /// the metrics endpoint's) is resolved and bound for a moment, as the daemon binds it, so
    /// that a port in use or a port below 1024 without the capability shows now; the addresses
    /// that the daemon running this config holds (asked on its control socket) are not tried.
    /// A unix: listen socket's directory must exist and be writable. forward and connect host
    /// names that do not resolve, and unix: forward targets that do not exist, are warnings:
    /// they are looked up again for every connection. Exit status 0 if all is well, 1 if not.
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Do not bind the listen addresses (names are still resolved).
        #[arg(long)]
        no_bind: bool,
    },
    /// Run every tunnel in the config file, in the foreground.
    #[command(long_about = RUN_ABOUT)]
    Run {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show the tunnels and open connections of a running daemon (read from its control socket).
    Status {
        /// The daemon's config file (its control socket is found from it).
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The control socket itself.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// One JSON object instead of the human table.
        #[arg(long)]
        json: bool,
    },
    /// Listener, connector and an echo service in one process on loopback, with in-memory keys.
    Demo {
        /// Exit after the first round trip: status 0 if it worked, 1 if not.
        #[arg(long)]
        once: bool,
    },
    /// Edit a listener's peers_file: trust or stop trusting connector keys, or list them.
    Trust {
        /// What to do.
        #[command(subcommand)]
        command: trust::TrustCommand,
    },
    /// Benchmark: throughput, CPU per GiB, connection rate, first-echo time and memory per
    /// idle connection, against raw loopback TCP and the cipher's own speed.
    #[command(long_about = bench::ABOUT)]
    Bench(bench::BenchArgs),
    /// Print a shell completion script (e.g. `sealpipe completions bash > /etc/bash_completion.d/sealpipe`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page sealpipe(1), in roff (e.g. `sealpipe man | man -l -`), or write
    /// every page to a directory.
    Man {
        /// Write all pages here instead (sealpipe.1, sealpipe-*.1, sealpipe.toml.5), creating
        /// it if need be; their paths are printed.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// `sealpipe run --help` and the DESCRIPTION of `sealpipe-run(1)`.
const RUN_ABOUT: &str = "\
Run every tunnel in the config file, in the foreground, logging to stderr.

It binds every listen address (or takes the sockets systemd passed), opens the control socket \
that `sealpipe status` reads, tells systemd it is ready (Type=notify) and runs until a signal:

SIGHUP: reload. The config file, the keys, the PSK and the peers files are read again; if \
they load, new connections get the new settings, tunnels added or removed are started or \
stopped, and open connections of a connector key no longer trusted are cut (`revoke = \"cut\"`, \
the default) or kept (`\"new-only\"`). A file that does not load is logged and the running \
configuration kept. `systemctl reload sealpipe@NAME` runs `sealpipe check` first.

SIGTERM, SIGINT: drain. No new connections are accepted; open ones may finish for up to \
`drain_timeout` (30s by default), then the rest are closed and it exits 0.

Exit status: 0 after a drain; 78 (EX_CONFIG) when the config file, or a key, PSK, peers or \
known_peers file it names, is wrong (starting again cannot help: the systemd unit does not \
restart on it); 1 on any other failure (a listen address in use, another sealpipe already \
running this config).";

/// `--bits`: a key size sealpipe accepts.
fn key_bits(s: &str) -> Result<usize, String> {
    let bits = s
        .parse::<usize>()
        .map_err(|_| format!("a number of bits, such as {DEFAULT_RSA_BITS}"))?;
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(format!(
            "RSA keys must have from {MIN_RSA_BITS} to {MAX_RSA_BITS} bits \
             ({DEFAULT_RSA_BITS} unless told otherwise)"
        ));
    }
    Ok(bits)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs a parsed command line; errors are printed with their context and give exit status 1.
pub fn main(cli: Cli) -> ExitCode {
    // The bench opens thousands of connections: only warnings unless asked.
    let default = if matches!(cli.command, Command::Bench(_)) {
        "warn"
    } else {
        "info"
    };
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref(), default) {
        eprintln!("sealpipe: error: {e}");
        return ExitCode::from(2);
    }
    let runs = matches!(cli.command, Command::Run { .. });
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<ConfigError>() {
                // Each problem of a file on a line of its own.
                Some(config @ ConfigError::Several { .. }) => {
                    for one in config.each() {
                        eprintln!("sealpipe: error: {one}");
                    }
                }
                _ => eprintln!("sealpipe: error: {e:#}"),
            }
            if runs && e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Keygen { out, bits } => keygen::run(&out, bits)?,
        Command::Fingerprint { file } => fingerprint::run(&file)?,
        Command::Check { config, no_bind } => {
            if !check::run(&config, no_bind)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Trust { command } => trust::run(command)?,
        Command::Run { config } => {
            // While the process has one thread: it unsets LISTEN_FDS and its companions.
            run::take_systemd_sockets();
            run::refuse_second(&config)?;
            runtime()?.block_on(run::run(&config))?
        }
        Command::Status {
            config,
            socket,
            json,
        } => status::run(
            status::Which {
                config: config.as_deref(),
                socket: socket.as_deref(),
            },
            json,
        )?,
        Command::Completions { shell } => completions::completions(shell),
        Command::Man { out } => man::run(out.as_deref())?,
        Command::Bench(args) => runtime()?.block_on(bench::run(args))?,
        Command::Demo { once } => {
            if !runtime()?.block_on(demo::run(once))? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use crate::proto::messages::PROTOCOL_VERSION;
    use crate::VERSION;

    #[test]
    fn version_names_the_wire_protocol_version() {
        let expected = format!(
            "{} (protocol {PROTOCOL_VERSION})",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(VERSION, expected, "bump VERSION with PROTOCOL_VERSION");
    }
}
