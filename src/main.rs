//! The `sealpipe` binary: parse the command line, hand over to [`sealpipe::cmd`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    sealpipe::cmd::main(sealpipe::cmd::Cli::parse())
}
