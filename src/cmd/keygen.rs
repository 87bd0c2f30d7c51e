//! `sealpipe keygen --out FILE [--bits N]`: a new RSA key pair, FILE (PKCS#8 PEM, mode 0600)
//! and FILE.pub (SPKI PEM). The fingerprint is the one line on stdout, for `FP=$(sealpipe keygen
//! …)`; what was written is said on stderr (as `ssh-keygen` and `wg pubkey` keep stdout).

use std::path::Path;

use crate::files::keyfile;

pub(crate) fn run(out: &Path, bits: usize) -> anyhow::Result<()> {
    if out.is_dir() {
        anyhow::bail!(
            "{}: is a directory; --out names the key file to write, such as {}",
            out.display(),
            out.join("host.pem").display()
        );
    }
    let id = keyfile::write_keypair(out, bits)?;
    eprintln!(
        "wrote {} (private, mode 0600) and {}.pub",
        out.display(),
        out.display()
    );
    println!("{}", id.fingerprint());
    Ok(())
}
