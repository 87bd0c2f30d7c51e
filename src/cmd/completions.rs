//! `sealpipe completions SHELL` and `sealpipe man`: generated from the clap definitions, so
//! they cannot drift from the command line.

use clap::CommandFactory;

use crate::cmd::Cli;

/// Prints the completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "sealpipe", &mut std::io::stdout());
}

/// Prints the manual page, in roff.
pub(crate) fn man() -> anyhow::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(())
}
