//! `sealpipe completions SHELL`: generated from the clap definitions, so it cannot drift from
//! the command line (the manual pages are `super::man`).

use clap::CommandFactory;

use crate::cmd::Cli;

/// Prints the completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "sealpipe", &mut std::io::stdout());
}
