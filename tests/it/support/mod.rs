//! Shared test support, included by every test binary (`mod support;`): committed test keys,
//! a deterministic RNG and signer for the test vectors, signers that count or lie, an in-memory
//! handshake driver, test data and polling. [`daemon`] runs the real `sealpipe` binary, and
//! [`mitm`] is an active adversary between two real daemons.
//!
//! No test binary uses all of it, hence `dead_code` is allowed here (and in the submodules).
#![allow(dead_code)]

pub mod daemon;
pub mod mitm;

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sealpipe::proto::handshake::{
    ConnectorParams, Established, Handshake, HandshakeError, HandshakeRandomness, ListenerParams,
};
use sealpipe::proto::identity::{
    Fingerprint, IdentityError, PrivateIdentity, PublicIdentity, Signer, TrustList,
};
use sealpipe::proto::key_schedule::Psk;
use sha2::{Digest, Sha256};

/// Raises this process's soft open-file limit to `want` (at most the hard limit); returns the
/// limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let target = want.min(hard);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        return target;
    }
    soft
}

/// VmRSS of process `pid` in KiB; fails the test if it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// True when the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Path of a file under `tests/data`.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// PEM text of a committed test key.
pub fn pem(name: &str) -> String {
    std::fs::read_to_string(data(name)).expect("test key")
}

/// The listener's test identity (made by `openssl genpkey`).
pub fn listener_key() -> PrivateIdentity {
    PrivateIdentity::from_pem(&pem("openssl-rsa2048.pem")).expect("listener key")
}

/// The connector's test identity.
pub fn connector_key() -> PrivateIdentity {
    PrivateIdentity::from_pem(&pem("peer-b.pem")).expect("connector key")
}

/// A third test identity, trusted and pinned by nobody.
pub fn untrusted_key() -> PrivateIdentity {
    PrivateIdentity::from_pem(&pem("untrusted.pem")).expect("untrusted key")
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Random-looking bytes from a seed (SHA-256 in counter mode; fast enough for tests).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            &Sha256::new()
                .chain_update(seed.to_le_bytes())
                .chain_update(i.to_le_bytes())
                .finalize(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// Reads `r` to its end; returns the SHA-256 of every byte read and how many there were. Fails
/// the test on a read error.
pub fn hash_to_end(r: &mut impl Read) -> ([u8; 32], usize) {
    let mut h = Sha256::new();
    let mut n = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (h.finalize().into(), n),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k;
            }
            Err(e) => panic!("read after {n} bytes: {e}"),
        }
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after 20 s, naming `what`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A deterministic RNG: SHA-256 in counter mode over a seed. For test vectors only.
pub struct DetRng {
    seed: [u8; 32],
    counter: u64,
}

impl DetRng {
    pub fn new(label: &str) -> Self {
        DetRng {
            seed: Sha256::digest(label.as_bytes()).into(),
            counter: 0,
        }
    }

    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        rand::rand_core::Rng::fill_bytes(self, &mut out);
        out
    }
}

impl rand::rand_core::TryRng for DetRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(32) {
            let block: [u8; 32] = Sha256::new()
                .chain_update(self.seed)
                .chain_update(self.counter.to_be_bytes())
                .finalize()
                .into();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

impl rand::rand_core::TryCryptoRng for DetRng {}

/// Fixed handshake randomness from a label.
pub fn det_randomness(label: &str) -> HandshakeRandomness {
    let mut rng = DetRng::new(label);
    HandshakeRandomness {
        random: rng.bytes32(),
        ephemeral: rng.bytes32(),
    }
}

/// An RSA-PSS-SHA256 signer whose salts come from a [`DetRng`], so that signatures (and so
/// whole handshakes) are reproducible. Test vectors only: it uses the `rsa` crate's private-key
/// operation, which production code never does.
pub struct DetSigner {
    key: rsa::pss::SigningKey<Sha256>,
    public: PublicIdentity,
    rng: Mutex<DetRng>,
}

impl DetSigner {
    pub fn new(pem_name: &str, label: &str) -> Self {
        let text = pem(pem_name);
        let key = rsa::PrivateKey::from_pkcs8_pem(&text).expect("pkcs8 test key");
        let public = PrivateIdentity::from_pem(&text)
            .expect("key")
            .public()
            .clone();
        DetSigner {
            key: rsa::pss::SigningKey::<Sha256>::new(key),
            public,
            rng: Mutex::new(DetRng::new(label)),
        }
    }
}

impl Signer for DetSigner {
    fn public(&self) -> &PublicIdentity {
        &self.public
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let mut rng = self.rng.lock().expect("rng");
        Ok(self.key.sign_with_rng(&mut *rng, msg).to_vec())
    }
}

/// Wraps a signer and counts the signatures it makes.
pub struct CountingSigner {
    pub inner: PrivateIdentity,
    pub count: AtomicU64,
}

impl CountingSigner {
    pub fn new(inner: PrivateIdentity) -> Arc<Self> {
        Arc::new(CountingSigner {
            inner,
            count: AtomicU64::new(0),
        })
    }
    pub fn signatures(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Signer for CountingSigner {
    fn public(&self) -> &PublicIdentity {
        self.inner.public()
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.inner.sign(msg)
    }
}

/// Presents one key and signs with another: what a peer without the private half of the key it
/// shows can at best do.
pub struct StolenPublicKey {
    pub shown: PublicIdentity,
    pub signer: PrivateIdentity,
}

impl Signer for StolenPublicKey {
    fn public(&self) -> &PublicIdentity {
        &self.shown
    }
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.signer.sign(msg)
    }
}

/// Listener parameters for `identity`, trusting `trusted`: no PSK, no enrollment options.
pub fn listener_params(identity: Arc<dyn Signer>, trusted: &[Fingerprint]) -> ListenerParams {
    let mut trust = TrustList::new();
    for fp in trusted {
        trust.insert(*fp, None);
    }
    ListenerParams {
        identity,
        next_identity: None,
        trust: Arc::new(trust),
        psk: None,
        accept_unknown: false,
        allow_tofu: false,
        service: SERVICE.into(),
    }
}

/// The service of the test parameters' tunnels.
pub const SERVICE: &str = "test";

/// Connector parameters for `identity`, pinned to `listener`, without a PSK.
pub fn connector_params(identity: Arc<dyn Signer>, listener: Fingerprint) -> ConnectorParams {
    ConnectorParams {
        identity,
        listener: listener.into(),
        psk: None,
        service: SERVICE.into(),
    }
}

/// A matching pair of parameters: connector pins the listener, listener trusts the connector.
pub struct Pair {
    pub connector: ConnectorParams,
    pub listener: ListenerParams,
    pub listener_signer: Arc<CountingSigner>,
}

pub fn pair(psk: Option<[u8; 32]>) -> Pair {
    let lkey = CountingSigner::new(listener_key());
    let ckey = connector_key();
    let mut trust = TrustList::new();
    trust.insert(ckey.fingerprint(), Some("connector".into()));
    let psk = psk.map(|p| Arc::new(Psk::from_bytes(p)));
    Pair {
        connector: ConnectorParams {
            listener: lkey.public().fingerprint().into(),
            identity: Arc::new(ckey),
            psk: psk.clone(),
            service: SERVICE.into(),
        },
        listener: ListenerParams {
            identity: lkey.clone(),
            next_identity: None,
            trust: Arc::new(trust),
            psk,
            accept_unknown: false,
            allow_tofu: false,
            service: SERVICE.into(),
        },
        listener_signer: lkey,
    }
}

impl Pair {
    /// [`handshakes`] of this pair's parameters.
    pub fn handshakes(&self, tag: &str) -> (Handshake, Handshake) {
        handshakes(self.connector.clone(), self.listener.clone(), tag)
    }

    /// [`handshake`] of this pair's parameters.
    pub fn handshake(&self, tag: &str) -> Outcome {
        handshake(self.connector.clone(), self.listener.clone(), tag)
    }
}

/// Like [`pair`], but both sides sign with [`DetSigner`]: the same handshake randomness gives
/// the same session keys every time.
pub fn det_pair() -> (ConnectorParams, ListenerParams) {
    det_pair_with("det listener", "det connector")
}

/// [`det_pair`] with the signers' salts drawn from these labels.
pub fn det_pair_with(
    listener_label: &str,
    connector_label: &str,
) -> (ConnectorParams, ListenerParams) {
    let l: Arc<dyn Signer> = Arc::new(DetSigner::new("openssl-rsa2048.pem", listener_label));
    let c: Arc<dyn Signer> = Arc::new(DetSigner::new("peer-b.pem", connector_label));
    let (lfp, cfp) = (l.public().fingerprint(), c.public().fingerprint());
    (connector_params(c, lfp), listener_params(l, &[cfp]))
}

/// Which side refused, and why.
#[derive(Debug)]
pub enum Outcome {
    /// Both sides finished.
    Done(Box<(Established, Established)>),
    /// A side returned an error.
    Refused(&'static str, HandshakeError),
    /// A side is still waiting for bytes that will never come.
    Stalled(&'static str),
}

impl Outcome {
    pub fn is_done(&self) -> bool {
        matches!(self, Outcome::Done(_))
    }
}

/// A connector and a listener handshake, with fixed randomness from `"{tag} c"` and `"{tag} l"`.
pub fn handshakes(c: ConnectorParams, l: ListenerParams, tag: &str) -> (Handshake, Handshake) {
    (
        Handshake::connector(c, det_randomness(&format!("{tag} c"))),
        Handshake::listener(l, det_randomness(&format!("{tag} l"))),
    )
}

/// [`drive`]s the [`handshakes`] of `c` and `l`, untouched.
pub fn handshake(c: ConnectorParams, l: ListenerParams, tag: &str) -> Outcome {
    let (c, l) = handshakes(c, l, tag);
    drive(c, l, |_, _| {})
}

/// Asserts that an [`Outcome`] is a refusal by `side` (`"listener"` or `"connector"`) with an
/// error that matches the pattern (and guard), as `matches!` would.
#[macro_export]
macro_rules! assert_refused {
    ($outcome:expr, $side:literal, $error:pat $(if $guard:expr)?) => {{
        let out = $outcome;
        assert!(
            matches!(out, $crate::support::Outcome::Refused($side, $error) $(if $guard)?),
            "{out:?}"
        );
    }};
}

/// Runs the three flights between the two handshakes; `tamper(flight, bytes)` may change each
/// flight on its way (0: connector hello, 1: listener hello + auth, 2: connector auth).
pub fn drive(
    mut c: Handshake,
    mut l: Handshake,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> Outcome {
    let mut flight = c.take_output();
    tamper(0, &mut flight);
    match l.read(&flight) {
        Err(e) => return Outcome::Refused("listener", e),
        Ok(_) if l.pending_output().is_empty() => return Outcome::Stalled("listener"),
        Ok(_) => {}
    }
    let mut flight = l.take_output();
    tamper(1, &mut flight);
    match c.read(&flight) {
        Err(e) => return Outcome::Refused("connector", e),
        Ok(_) if !c.is_done() => return Outcome::Stalled("connector"),
        Ok(_) => {}
    }
    let mut flight = c.take_output();
    tamper(2, &mut flight);
    match l.read(&flight) {
        Err(e) => return Outcome::Refused("listener", e),
        Ok(_) if !l.is_done() => return Outcome::Stalled("listener"),
        Ok(_) => {}
    }
    match (c.finish(), l.finish()) {
        (Ok(ce), Ok(le)) => Outcome::Done(Box::new((ce, le))),
        (Err(e), _) => Outcome::Refused("connector", e),
        (_, Err(e)) => Outcome::Refused("listener", e),
    }
}
