//! The listener's full-handshake answers (ListenerHello and the signed ListenerAuth, made by
//! [`Handshake::make_reply`]), under a global signature budget (`signature_rate`, a
//! [`TokenBucket`]) and a budget of time (`signature_cpu`, a [`TimeBudget`]: the answers made
//! are timed, so the share holds whatever the key size and the machine). An idle listener
//! signs one hello at a time on the connection's own worker (no thread hop); every other hello
//! goes to a queue that is fair between sources ([`FairQueue`]), drained by a few blocking
//! threads, so that a flood never holds more than one async worker. Resumptions never come here (their answer is made inline, cheaply), so they
//! never wait behind a flood of hellos. SECURITY.md, "Flooding the listener", has the reasoning
//! and the defaults.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::Tuning;
use crate::proto::handshake::{Handshake, HandshakeError};
use crate::tunnel::limits::{FairQueue, Pushed, Source, TimeBudget, TokenBucket};
use crate::tunnel::state::TunnelState;

/// Hellos waiting for a signature per listener tunnel, all sources together. Each holds its
/// handshake state (a few KiB) and its socket; while the queue is full a hello from a source
/// with fewer queued pushes out the newest hello of the source with most.
pub(crate) const SIGNING_QUEUE: usize = 1024;
/// Hellos one source may have waiting at once (with `source_handshake_rate` on): a connector's
/// default `max_handshakes`, so that a connector starting cold with many clients at once is
/// never refused by it. Fairness does not rest on it: while the queue is full, the longest
/// source queue gives way to the others.
pub(crate) const PER_SOURCE_QUEUE: usize = 128;
/// Longest a signing thread sleeps at once while the budget is empty.
const MAX_NAP: Duration = Duration::from_millis(50);

/// Threads that make signatures per listener tunnel: half the cores, at least one.
pub(crate) fn signing_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Why a hello got no signed answer.
#[derive(Debug)]
pub(crate) enum NotSigned {
    /// No place in the queue, or pushed out of it by hellos of less busy sources.
    Overloaded,
    /// The answer could not be made (the handshake is dead).
    Failed(HandshakeError),
}

type Done = oneshot::Sender<Result<Handshake, HandshakeError>>;

/// One hello waiting for its answer.
struct Job {
    source: Source,
    hs: Handshake,
    done: Done,
}

/// The queue, the budget and the threads of one listener tunnel (in its [`TunnelState`]).
#[derive(Debug)]
pub(crate) struct SigningPool {
    inner: Mutex<Inner>,
}

struct Inner {
    queue: FairQueue<Job>,
    budget: TokenBucket,
    /// The time answers may take.
    cpu: TimeBudget,
    /// `signature_rate` of the latest hello queued (a reload may change it).
    rate: u32,
    /// `signature_cpu` of the latest hello queued.
    cpu_percent: u32,
    /// Signing threads running now.
    running: usize,
    /// A hello is being signed on an async worker now (at most one at a time).
    inline: bool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("queued", &self.queue.len())
            .field("rate", &self.rate)
            .field("running", &self.running)
            .field("inline", &self.inline)
            .finish()
    }
}

impl Default for SigningPool {
    fn default() -> Self {
        SigningPool {
            inner: Mutex::new(Inner {
                queue: FairQueue::new(SIGNING_QUEUE),
                budget: TokenBucket::new(),
                cpu: TimeBudget::new(),
                rate: 0,
                cpu_percent: 0,
                running: 0,
                inline: false,
            }),
        }
    }
}

impl SigningPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hellos waiting for a signature now.
    pub(crate) fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Takes the one inline place and a token of the budget when nothing waits in the queue
    /// (a queued hello is served first) and the time budget is not overdrawn, or nothing.
    fn try_inline(&self, rate: u32, cpu_percent: u32) -> Option<InlinePlace<'_>> {
        let mut inner = self.lock();
        inner.rate = rate;
        inner.cpu_percent = cpu_percent;
        let now = Instant::now();
        if inner.inline || inner.queue.len() > 0 {
            return None;
        }
        inner.cpu.ready(cpu_percent, now).ok()?;
        inner.budget.take(rate, rate, now).ok()?;
        inner.inline = true;
        Some(InlinePlace(self, now))
    }

    /// Charges an answer that started at `started` to the time budget.
    fn spent(inner: &mut Inner, started: Instant) {
        let now = Instant::now();
        let percent = inner.cpu_percent;
        inner.cpu.spend(percent, now.duration_since(started), now);
    }
}

/// The inline place, given back (and its time charged) when dropped.
struct InlinePlace<'a>(&'a SigningPool, Instant);

impl Drop for InlinePlace<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.inline = false;
        SigningPool::spent(&mut inner, self.1);
    }
}

/// Answers `hs` (a listener handshake whose reply is pending, from `source`): inline when the
/// listener is idle, else through the queue, waiting for a signing thread. The caller bounds
/// the wait (`handshake_timeout`); a hello given up is skipped by the threads without a
/// signature.
pub(crate) async fn sign(
    state: &Arc<TunnelState>,
    source: Source,
    mut hs: Handshake,
    tuning: &Tuning,
) -> Result<Handshake, NotSigned> {
    if let Some(_place) = state
        .signing
        .try_inline(tuning.signature_rate, tuning.signature_cpu)
    {
        state.counters.signatures.fetch_add(1, Ordering::Relaxed);
        return hs.make_reply().map(|()| hs).map_err(NotSigned::Failed);
    }
    let (done, answer) = oneshot::channel();
    let per_source = (tuning.source_handshake_rate > 0).then_some(PER_SOURCE_QUEUE);
    let spawn = {
        let mut inner = state.signing.lock();
        inner.rate = tuning.signature_rate;
        inner.cpu_percent = tuning.signature_cpu;
        let job = Job { source, hs, done };
        let pushed = match inner.queue.push(source, job, per_source) {
            Pushed::Refused(job) => {
                // Connections given up while queued may hold the places: drop them and retry.
                inner.queue.retain(|j| !j.done.is_closed());
                inner.queue.push(source, job, per_source)
            }
            p => p,
        };
        match pushed {
            Pushed::Refused(_) => return Err(NotSigned::Overloaded),
            // The pushed-out hello's waiter sees its sender dropped: `Overloaded`.
            Pushed::Evicted(_) | Pushed::Queued => {}
        }
        let spawn = inner.running < signing_threads();
        if spawn {
            inner.running += 1;
        }
        spawn
    };
    if spawn {
        let state = state.clone();
        tokio::task::spawn_blocking(move || drain(&state));
    }
    match answer.await {
        Ok(Ok(hs)) => Ok(hs),
        Ok(Err(e)) => Err(NotSigned::Failed(e)),
        Err(_) => Err(NotSigned::Overloaded),
    }
}

/// A signing thread: answers queued hellos in turn while the budget allows, sleeping while it
/// is empty; returns once the queue is empty.
fn drain(state: &TunnelState) {
    loop {
        let job = {
            let mut inner = state.signing.lock();
            loop {
                let Some(job) = inner.queue.pop() else {
                    inner.running -= 1;
                    return;
                };
                if job.done.is_closed() {
                    continue;
                }
                let (rate, percent, now) = (inner.rate, inner.cpu_percent, Instant::now());
                let allowed = inner
                    .cpu
                    .ready(percent, now)
                    .and_then(|()| inner.budget.take(rate, rate, now));
                match allowed {
                    Ok(()) => break Some(job),
                    Err(wait) => {
                        // Put it back at its source's turn: it is served first after the nap.
                        inner.queue.push_front(job.source, job);
                        drop(inner);
                        std::thread::sleep(wait.min(MAX_NAP));
                        break None;
                    }
                }
            }
        };
        let Some(Job { mut hs, done, .. }) = job else {
            continue;
        };
        state.counters.signatures.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = hs.make_reply().map(|()| hs);
        SigningPool::spent(&mut state.signing.lock(), started);
        let _ = done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hello_at_a_time_is_signed_inline_and_only_within_the_budget() {
        let pool = SigningPool::default();
        let place = pool.try_inline(0, 0).expect("an idle pool signs inline");
        assert!(
            pool.try_inline(0, 0).is_none(),
            "a second one goes to the queue"
        );
        drop(place);
        assert!(pool.try_inline(0, 0).is_some(), "the place is given back");

        let pool = SigningPool::default();
        for _ in 0..3 {
            assert!(
                pool.try_inline(3, 0).is_some(),
                "a burst of `signature_rate`"
            );
        }
        assert!(
            pool.try_inline(3, 0).is_none(),
            "past the budget the hello waits in the queue"
        );
    }

    #[test]
    fn answers_are_timed_against_signature_cpu() {
        let pool = SigningPool::default();
        let place = pool.try_inline(0, 1).expect("a full time budget");
        // An answer that took 20 ms overdraws a 1 % budget (10 ms of each second)...
        let long_ago = Instant::now() - Duration::from_millis(20);
        drop(InlinePlace(place.0, long_ago));
        std::mem::forget(place);
        assert!(
            pool.try_inline(0, 1).is_none(),
            "an overdrawn time budget sends the next hello to the queue"
        );
        // ...which the same answers leave alone without a cap.
        assert!(pool.try_inline(0, 0).is_some(), "0: no cap");
    }
}
