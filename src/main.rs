//! The `sealpipe` binary: parse the command line, hand over to [`sealpipe::cli`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    sealpipe::cli::main(sealpipe::cli::Cli::parse())
}
