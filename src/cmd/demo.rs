//! `sealpipe demo`: a connector, a listener and an echo service in one process on loopback,
//! with identities made in memory, so a new user sees a working tunnel with no setup.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Tuning;
use crate::daemon::pair::{echo_service, identities, loopback, round_trip, spawn_pair};
use crate::proto::messages::PROTOCOL_VERSION;

/// Demo keys are 2048 bits so that the demo starts at once; `keygen` defaults to 3072.
const DEMO_BITS: usize = 2048;

/// Runs the demo; with `once`, returns after the round trip (true if it worked).
pub(super) async fn run(once: bool) -> anyhow::Result<bool> {
    eprintln!("sealpipe demo: making two {DEMO_BITS}-bit RSA identities in memory…");
    let (l_id, c_id) = identities(DEMO_BITS).await?;
    let (l_fp, c_fp) = (l_id.fingerprint(), c_id.fingerprint());

    let (echo, echo_addr) = loopback().await?;
    tokio::spawn(echo_service(echo));
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let (plain_addr, sealed_addr) = spawn_pair(
        "demo",
        echo_addr,
        l_id,
        c_id,
        Tuning::default(),
        &tracker,
        &stop,
    )
    .await?;

    let message = b"hello through sealpipe\n";
    let ok = match round_trip(plain_addr, message).await {
        Ok(back) if back == message => true,
        Ok(back) => {
            eprintln!(
                "demo: round trip returned {} bytes that differ from what was sent",
                back.len()
            );
            false
        }
        Err(e) => {
            eprintln!("demo: round trip failed: {e}");
            false
        }
    };
    println!("sealpipe demo (protocol {PROTOCOL_VERSION})");
    println!("  echo service    plain   {echo_addr}");
    println!("  listener        sealed  {sealed_addr}   key {l_fp}");
    println!("  connector       plain   {plain_addr}   key {c_fp}");
    println!(
        "  round trip:     {}",
        if ok {
            "ok, the echo came back through the tunnel"
        } else {
            "FAILED"
        }
    );
    if once {
        stop.cancel();
        return Ok(ok);
    }
    println!();
    println!(
        "Try it:  socat - TCP:{plain_addr}     (or: nc {} {})",
        plain_addr.ip(),
        plain_addr.port()
    );
    println!(
        "Every line you type goes connector → sealed → listener → echo and back. Ctrl-C stops."
    );
    tokio::signal::ctrl_c().await?;
    stop.cancel();
    Ok(ok)
}
