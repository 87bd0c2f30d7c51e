//! The listener's full-handshake answers (ListenerHello and the signed ListenerAuth, made by
//! [`Handshake::make_reply`]), under a global signature budget (`signature_rate`, a
//! [`TokenBucket`]) and a budget of time (`signature_cpu`, a [`TimeBudget`]: the answers made
//! are timed, so the share holds whatever the key size and the machine). An idle listener
//! signs one hello at a time on the connection's own worker (no thread hop); every other hello
//! goes to a queue that is fair between sources ([`FairQueue`]), drained by a few blocking
//! threads, so that a flood never holds more than one async worker. Resumptions never come here (their answer is made inline, cheaply), so they
//! never wait behind a flood of hellos. SECURITY.md, "Flooding the listener", has the reasoning
//! and the defaults.
//!
//! The budget rules take the time as a parameter (`now`); the async callers and the signing
//! threads pass the time of the call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::proto::handshake::{Handshake, HandshakeError};
use crate::tunnel::limits::{FairQueue, Pushed, Source, TimeBudget, TokenBucket};
use crate::tunnel::settings::ListenerSettings;

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

/// The queue, the budget and the threads of one listener tunnel (in its
/// [`crate::tunnel::state::TunnelState`]).
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

    /// Takes the one inline place and a token of the budget at `now` when nothing waits in the
    /// queue (a queued hello is served first) and the time budget is not overdrawn, or nothing.
    fn try_inline(&self, rate: u32, cpu_percent: u32, now: Instant) -> Option<InlinePlace<'_>> {
        let mut inner = self.lock();
        inner.rate = rate;
        inner.cpu_percent = cpu_percent;
        if inner.inline || inner.queue.len() > 0 {
            return None;
        }
        inner.allowed(now).ok()?;
        inner.inline = true;
        Some(InlinePlace(self, now))
    }

    /// Charges other handshake work that took `took` (a ConnectorAuth's verification) to the
    /// time budget of the answers (`signature_cpu` = `cpu_percent`), as if an answer had taken it.
    pub(crate) fn charge(&self, took: Duration, cpu_percent: u32, now: Instant) {
        if took.is_zero() {
            return;
        }
        let mut inner = self.lock();
        inner.cpu_percent = cpu_percent;
        inner.cpu.spend(cpu_percent, took, now);
    }

    /// Charges an answer that ran from `started` to `now` to the time budget.
    fn spent(inner: &mut Inner, started: Instant, now: Instant) {
        let percent = inner.cpu_percent;
        inner
            .cpu
            .spend(percent, now.saturating_duration_since(started), now);
    }
}

impl Inner {
    /// Whether one more answer may be made at `now`: the time budget (`signature_cpu`) not
    /// overdrawn, and a token of the signature budget (`signature_rate`) taken. `Err(wait)`:
    /// not before `wait`.
    fn allowed(&mut self, now: Instant) -> Result<(), Duration> {
        let (rate, percent) = (self.rate, self.cpu_percent);
        self.cpu
            .ready(percent, now)
            .and_then(|()| self.budget.take(rate, rate, now))
    }
}

/// The inline place, given back (and its time charged) when dropped.
struct InlinePlace<'a>(&'a SigningPool, Instant);

impl Drop for InlinePlace<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.inline = false;
        SigningPool::spent(&mut inner, self.1, Instant::now());
    }
}

/// Answers `hs` (a listener handshake whose reply is pending, from `source`) with `pool`, the
/// listener's, under its `settings`, counting each signature made in `signatures`: inline when
/// the listener is idle, else through the queue, waiting for a signing thread. The caller
/// bounds the wait (`handshake_timeout`); a hello given up is skipped by the threads without a
/// signature.
pub(crate) async fn sign(
    pool: &Arc<SigningPool>,
    signatures: &Arc<AtomicU64>,
    source: Source,
    mut hs: Handshake,
    settings: &ListenerSettings,
) -> Result<Handshake, NotSigned> {
    if let Some(_place) = pool.try_inline(
        settings.signature_rate,
        settings.signature_cpu,
        Instant::now(),
    ) {
        signatures.fetch_add(1, Ordering::Relaxed);
        return hs.make_reply().map(|()| hs).map_err(NotSigned::Failed);
    }
    let (done, answer) = oneshot::channel();
    let per_source = (settings.source_handshake_rate > 0).then_some(PER_SOURCE_QUEUE);
    let spawn = {
        let mut inner = pool.lock();
        inner.rate = settings.signature_rate;
        inner.cpu_percent = settings.signature_cpu;
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
        let (pool, signatures) = (pool.clone(), signatures.clone());
        tokio::task::spawn_blocking(move || drain(&pool, &signatures));
    }
    match answer.await {
        Ok(Ok(hs)) => Ok(hs),
        Ok(Err(e)) => Err(NotSigned::Failed(e)),
        Err(_) => Err(NotSigned::Overloaded),
    }
}

/// A signing thread of `pool`: answers queued hellos in turn while the budget allows, sleeping
/// while it is empty, and counts each signature in `signatures`; returns once the queue is
/// empty.
fn drain(pool: &SigningPool, signatures: &AtomicU64) {
    loop {
        let job = {
            let mut inner = pool.lock();
            loop {
                let Some(job) = inner.queue.pop() else {
                    inner.running -= 1;
                    return;
                };
                if job.done.is_closed() {
                    continue;
                }
                match inner.allowed(Instant::now()) {
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
        signatures.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = hs.make_reply().map(|()| hs);
        SigningPool::spent(&mut pool.lock(), started, Instant::now());
        let _ = done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hello_at_a_time_is_signed_inline_and_only_within_the_budget() {
        let now = Instant::now();
        let pool = SigningPool::default();
        let place = pool
            .try_inline(0, 0, now)
            .expect("an idle pool signs inline");
        assert!(
            pool.try_inline(0, 0, now).is_none(),
            "a second one goes to the queue"
        );
        drop(place);
        assert!(
            pool.try_inline(0, 0, now).is_some(),
            "the place is given back"
        );

        let pool = SigningPool::default();
        for _ in 0..3 {
            assert!(
                pool.try_inline(3, 0, now).is_some(),
                "a burst of `signature_rate`"
            );
        }
        assert!(
            pool.try_inline(3, 0, now).is_none(),
            "past the budget the hello waits in the queue"
        );
    }

    #[test]
    fn answers_are_timed_against_signature_cpu() {
        let pool = SigningPool::default();
        let place = pool
            .try_inline(0, 1, Instant::now())
            .expect("a full time budget");
        // An answer that took 20 ms overdraws a 1 % budget (10 ms of each second)...
        let long_ago = Instant::now() - Duration::from_millis(20);
        drop(InlinePlace(place.0, long_ago));
        std::mem::forget(place);
        assert!(
            pool.try_inline(0, 1, Instant::now()).is_none(),
            "an overdrawn time budget sends the next hello to the queue"
        );
        // ...which the same answers leave alone without a cap.
        assert!(pool.try_inline(0, 0, Instant::now()).is_some(), "0: no cap");
    }

    #[test]
    fn the_signature_budget_refills_with_time() {
        let t0 = Instant::now();
        let pool = SigningPool::default();
        // A burst of `signature_rate` (4), then nothing at the same instant.
        for _ in 0..4 {
            drop(pool.try_inline(4, 0, t0).expect("within the burst"));
        }
        assert!(pool.try_inline(4, 0, t0).is_none(), "the burst is spent");
        let almost = t0 + Duration::from_millis(240);
        assert!(
            pool.try_inline(4, 0, almost).is_none(),
            "less than one signature's worth of time"
        );
        // 4 per second: one more every 250 ms, and no more than that.
        let t1 = t0 + Duration::from_millis(250);
        drop(pool.try_inline(4, 0, t1).expect("refilled by one"));
        assert!(pool.try_inline(4, 0, t1).is_none(), "by one only");
        // A long pause refills up to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..4 {
            drop(pool.try_inline(4, 0, t2).expect("a full burst again"));
        }
        assert!(pool.try_inline(4, 0, t2).is_none(), "capped at the burst");
    }

    #[test]
    fn an_overdrawn_time_budget_refuses_until_paid_back() {
        let t0 = Instant::now();
        let pool = SigningPool::default();
        pool.lock().cpu_percent = 1;
        assert!(pool.lock().allowed(t0).is_ok(), "a full time budget");
        // An answer of 20 ms at 1 % (10 ms of each second): overdrawn by 10 ms, paid back
        // after one second.
        let end = t0 + Duration::from_millis(20);
        SigningPool::spent(&mut pool.lock(), t0, end);
        assert!(pool.try_inline(0, 1, end).is_none(), "overdrawn");
        assert!(
            pool.try_inline(0, 1, end + Duration::from_millis(500))
                .is_none(),
            "half paid back"
        );
        let waited = pool.lock().allowed(end + Duration::from_millis(500));
        assert!(
            matches!(waited, Err(w) if w > Duration::from_millis(400) && w < Duration::from_millis(600)),
            "the signing threads are told how long to wait: {waited:?}"
        );
        assert!(
            pool.try_inline(0, 1, end + Duration::from_millis(1500))
                .is_some(),
            "paid back"
        );
    }

    /// A ConnectorAuth's verification charged to the answers' time budget (PROTOCOL.md §2,
    /// SECURITY.md): a listener busy verifying makes fewer answers, so answers and
    /// verifications together stay within `signature_cpu`.
    #[test]
    fn verification_time_is_charged_to_the_answers_budget() {
        let t0 = Instant::now();
        let pool = SigningPool::default();
        assert!(pool.try_inline(0, 1, t0).is_some(), "a full time budget");
        pool.charge(Duration::from_millis(20), 1, t0);
        assert!(
            pool.try_inline(0, 1, t0).is_none(),
            "overdrawn by the verification"
        );
        assert!(
            pool.try_inline(0, 1, t0 + Duration::from_millis(1500))
                .is_some(),
            "paid back"
        );
    }
}
