//! `sealpipe check --config FILE`: loads the config and every key and peers file it names, as
//! `run` would, and says OK or what is wrong (exit status 1).

use std::path::Path;

use crate::daemon;
use crate::proto::messages::PROTOCOL_VERSION;

pub(crate) fn run(config: &Path) -> anyhow::Result<()> {
    let built = daemon::build(config)?;
    println!(
        "{}: OK (protocol {PROTOCOL_VERSION}): {} listener(s), {} connector(s); identity {}",
        config.display(),
        built.listeners.len(),
        built.connectors.len(),
        identity(&built)
    );
    Ok(())
}

/// The fingerprint of `private_key` and, on a listener that also holds a `next_private_key`,
/// that one's too.
fn identity(built: &daemon::Built) -> String {
    if let Some((_, t)) = built.listeners.first() {
        let own = t.params.identity.public().fingerprint();
        return match &t.params.next_identity {
            Some(next) => format!("{own}; next_private_key {}", next.public().fingerprint()),
            None => own.to_string(),
        };
    }
    built
        .connectors
        .first()
        .map(|(_, t)| t.params.identity.public().fingerprint().to_string())
        .unwrap_or_default()
}
