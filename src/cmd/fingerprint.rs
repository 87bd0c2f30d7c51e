//! `sealpipe fingerprint FILE`: the fingerprint of a private or public key PEM file.

use std::path::Path;

use crate::files::keyfile;

pub(crate) fn run(file: &Path) -> anyhow::Result<()> {
    println!("{}", keyfile::load_any_public(file)?.fingerprint());
    Ok(())
}
