//! The accept loop of the daemon's small side services (the metrics endpoint, the control
//! socket): one short answer per connection, a bounded number at once (more are closed at
//! once), each bounded in time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// A listening socket of a side service.
pub(crate) trait Acceptor: Send + 'static {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// Accepts the next connection.
    fn accept_one(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> std::io::Result<TcpStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Acceptor for UnixListener {
    type Stream = UnixStream;
    async fn accept_one(&self) -> std::io::Result<UnixStream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Answers each connection on `listener` with `answer` until `stop`: at most `max` at once,
/// each given `timeout`. `what` names the service in log lines.
pub(crate) async fn serve<L, A, F>(
    listener: L,
    what: &'static str,
    max: usize,
    timeout: Duration,
    stop: CancellationToken,
    answer: A,
) where
    L: Acceptor,
    A: Fn(L::Stream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept_one() => r,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let fut = answer(stream);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, fut).await;
            drop(slot);
        });
    }
}
