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
        built
            .listeners
            .first()
            .map(|(_, t)| t.params.identity.public().fingerprint())
            .or_else(|| {
                built
                    .connectors
                    .first()
                    .map(|(_, t)| t.params.identity.public().fingerprint())
            })
            .map(|f| f.to_string())
            .unwrap_or_default()
    );
    Ok(())
}
