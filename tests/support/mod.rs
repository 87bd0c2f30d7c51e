//! Shared test support: committed test keys, a deterministic RNG and signer for the test
//! vectors, a signer that counts its signatures, and an in-memory handshake driver.
#![allow(dead_code)]

pub mod daemon;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sealpipe::proto::handshake::{
    ConnectorParams, Established, Handshake, HandshakeError, HandshakeRandomness, ListenerParams,
};
use sealpipe::proto::identity::{
    IdentityError, PrivateIdentity, PublicIdentity, Signer, TrustList,
};
use sealpipe::proto::keys::Psk;
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

/// VmRSS of process `pid` in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
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
        },
        listener: ListenerParams {
            identity: lkey.clone(),
            trust: Arc::new(trust),
            psk,
            accept_unknown: false,
            allow_tofu: false,
        },
        listener_signer: lkey,
    }
}

/// Like [`pair`], but both sides sign with [`DetSigner`]: the same handshake randomness gives
/// the same session keys every time.
pub fn det_pair() -> (ConnectorParams, ListenerParams) {
    let l: Arc<dyn Signer> = Arc::new(DetSigner::new("openssl-rsa2048.pem", "det listener"));
    let c: Arc<dyn Signer> = Arc::new(DetSigner::new("peer-b.pem", "det connector"));
    let mut trust = TrustList::new();
    trust.insert(c.public().fingerprint(), None);
    (
        ConnectorParams {
            listener: l.public().fingerprint().into(),
            identity: c,
            psk: None,
        },
        ListenerParams {
            identity: l,
            trust: Arc::new(trust),
            psk: None,
            accept_unknown: false,
            allow_tofu: false,
        },
    )
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
