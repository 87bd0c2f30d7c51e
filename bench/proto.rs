//! Micro-benchmarks of the sans-IO protocol core (`src/proto/`), with criterion.
//!
//! * `record/seal`, `record/open`: the record layer in place, at 1, 16 and 64 KiB of plaintext;
//! * `aead/seal_in_place`: the bare ChaCha20-Poly1305 seal behind `proto::aead::Aead` (aws-lc-rs)
//!   at the same sizes (the reference the record layer is compared with);
//!   `aead/rustcrypto_seal_in_place`: the RustCrypto implementation kept behind the same seam;
//! * `handshake/full`: both roles of a whole handshake, back to back, in memory;
//! * `handshake/listener`, `handshake/connector`: the same handshakes, timing one role's calls
//!   only (its constructor, its `read`s and its `finish`);
//! * `handshake/resumed_listener`, `handshake/resumed_connector`: a resumed handshake
//!   (PROTOCOL.md §9: X25519 and HMACs, no RSA), timing one role's calls only;
//! * `kex/exchange`: one fresh hybrid exchange inside a session (PROTOCOL.md §4.5), both roles
//!   back to back in memory: the connector's X25519 and ML-KEM-768 key generation and KeyShare,
//!   the listener's X25519 and encapsulation and Reply, the connector's decapsulation and Done,
//!   the four key switches and the records' sealing and opening;
//!   `kex/connector`, `kex/listener`: the same, timing one role's calls only;
//! * `reference/...`: one RSA-2048 PSS signature and verification (aws-lc-rs), one X25519 key
//!   generation and exchange, and the key schedule of one handshake.
//!
//! Keys are the committed RSA-2048 test keys (`tests/data/`): `openssl-rsa2048.pem` for the
//! listener, `peer-b.pem` for the connector. Signatures and handshake randomness are the real,
//! randomized ones, as in production. See `bench/README.md` for how to run.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use sealpipe::proto::aead::{Aead, RustCryptoAead, KEY_LEN, NONCE_LEN};
use sealpipe::proto::handshake::{
    ConnectorParams, Handshake, HandshakeRandomness, ListenerParams, Resumption,
    CONNECTOR_SIGNATURE_CONTEXT,
};
use sealpipe::proto::identity::{PrivateIdentity, PublicIdentity, TrustList};
use sealpipe::proto::key_schedule::{hash, Direction, HandshakeSecrets, Secret};
use sealpipe::proto::record::{Opened, Opener, Sealer, HEADER_LEN, OVERHEAD};
use sealpipe::proto::resume::{ConnectorTickets, TicketPolicy, TicketStore};
use sealpipe::proto::{mlkem, x25519};
use x25519_dalek::{PublicKey, StaticSecret};

const LISTENER_PEM: &str = include_str!("../tests/data/openssl-rsa2048.pem");
const CONNECTOR_PEM: &str = include_str!("../tests/data/peer-b.pem");

/// Plaintext sizes of the record and AEAD benchmarks.
const SIZES: [(usize, &str); 3] = [(1024, "1KiB"), (16 * 1024, "16KiB"), (64 * 1024, "64KiB")];

/// Never rekey during a benchmark: the record layer's byte threshold is out of reach.
const NO_REKEY: u64 = u64::MAX;

fn fresh_randomness() -> HandshakeRandomness {
    HandshakeRandomness::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng))
}

/// Matching connector and listener parameters with the committed RSA-2048 test keys.
fn params() -> (ConnectorParams, ListenerParams) {
    let listener = PrivateIdentity::from_pem(LISTENER_PEM).expect("listener test key");
    let connector = PrivateIdentity::from_pem(CONNECTOR_PEM).expect("connector test key");
    let mut trust = TrustList::new();
    trust.insert(connector.fingerprint(), None);
    (
        ConnectorParams {
            listener: listener.fingerprint().into(),
            identity: Arc::new(connector),
            psk: None,
            service: "bench".into(),
        },
        ListenerParams {
            identity: Arc::new(listener),
            next_identity: None,
            trust: Arc::new(trust),
            psk: None,
            accept_unknown: false,
            allow_tofu: false,
            service: "bench".into(),
        },
    )
}

/// Time spent in each role during one handshake.
struct RoleTimes {
    connector: Duration,
    listener: Duration,
}

/// One whole handshake in memory, timing each role's calls separately. The randomness is drawn
/// before the clock starts; the flights are handed over without copying.
fn timed_handshake(c_params: &ConnectorParams, l_params: &ListenerParams) -> RoleTimes {
    let (c_rand, l_rand) = (fresh_randomness(), fresh_randomness());
    let (c_params, l_params) = (c_params.clone(), l_params.clone());

    // Connector: its hello (X25519 key generation, mac1).
    let t = Instant::now();
    let mut c = Handshake::connector(c_params, c_rand);
    let hello = c.take_output();
    let mut connector = t.elapsed();

    // Listener: check mac1, X25519, key schedule, its hello and auth (one RSA signature).
    let t = Instant::now();
    let mut l = Handshake::listener(l_params, l_rand);
    l.read(&hello).expect("listener reads hello");
    let flight = l.take_output();
    let mut listener = t.elapsed();

    // Connector: X25519, key schedule, verify the listener's signature and finished MAC, then
    // its own auth (one RSA signature).
    let t = Instant::now();
    c.read(&flight).expect("connector reads listener flight");
    let auth = c.take_output();
    let c_est = c.finish().expect("connector done");
    connector += t.elapsed();

    // Listener: check the trust list, the connector's signature and finished MAC.
    let t = Instant::now();
    l.read(&auth).expect("listener reads connector auth");
    let l_est = l.finish().expect("listener done");
    listener += t.elapsed();

    black_box((c_est, l_est));
    RoleTimes {
        connector,
        listener,
    }
}

/// The two ticket stores of a connector/listener pair.
struct Stores {
    connector: Arc<Mutex<ConnectorTickets>>,
    listener: Arc<Mutex<TicketStore>>,
}

impl Stores {
    fn new() -> Self {
        Stores {
            connector: Arc::default(),
            listener: Arc::default(),
        }
    }

    fn resumption<S>(store: &Arc<Mutex<S>>) -> Resumption<S> {
        Resumption {
            store: store.clone(),
            policy: TicketPolicy {
                lifetime: Duration::from_secs(24 * 3600),
                uses: 1_000_000,
            },
            now: Instant::now(),
        }
    }
}

/// One resumed handshake in memory, timing each role's calls separately; when the connector has
/// no ticket (the first call, or a used-up one), an untimed full handshake makes one first.
fn timed_resumption(
    c_params: &ConnectorParams,
    l_params: &ListenerParams,
    stores: &Stores,
) -> RoleTimes {
    let no_ticket = stores.connector.lock().expect("store").is_empty();
    if no_ticket {
        let mut c = Handshake::connector_resuming(
            c_params.clone(),
            fresh_randomness(),
            Stores::resumption(&stores.connector),
        );
        let mut l = Handshake::listener_resuming(
            l_params.clone(),
            fresh_randomness(),
            Stores::resumption(&stores.listener),
        );
        l.read(&c.take_output()).expect("listener reads hello");
        c.read(&l.take_output()).expect("connector reads flight");
        l.read(&c.take_output()).expect("listener reads auth");
        black_box((
            c.finish().expect("connector"),
            l.finish().expect("listener"),
        ));
    }
    let (c_rand, l_rand) = (fresh_randomness(), fresh_randomness());
    let (c_params, l_params) = (c_params.clone(), l_params.clone());
    let (c_res, l_res) = (
        Stores::resumption(&stores.connector),
        Stores::resumption(&stores.listener),
    );

    // Connector: take the ticket, X25519 key generation, binder, mac1.
    let t = Instant::now();
    let mut c = Handshake::connector_resuming(c_params, c_rand, c_res);
    let hello = c.take_output();
    let mut connector = t.elapsed();

    // Listener: mac1, ticket lookup and binder, X25519, key schedule, finished.
    let t = Instant::now();
    let mut l = Handshake::listener_resuming(l_params, l_rand, l_res);
    l.read(&hello).expect("listener reads resume hello");
    let accept = l.take_output();
    let mut listener = t.elapsed();

    // Connector: X25519, key schedule, check finished, its own finished.
    let t = Instant::now();
    c.read(&accept).expect("connector reads resume accept");
    let fin = c.take_output();
    let c_est = c.finish().expect("connector done");
    connector += t.elapsed();

    // Listener: check the connector's finished, traffic secrets.
    let t = Instant::now();
    l.read(&fin).expect("listener reads resume finished");
    let l_est = l.finish().expect("listener done");
    listener += t.elapsed();

    assert!(c_est.resumed && l_est.resumed, "the benchmark must resume");
    black_box((c_est, l_est));
    RoleTimes {
        connector,
        listener,
    }
}

fn bench_records(c: &mut Criterion) {
    let secret = Secret::from_bytes([0x5e; 32]);

    let mut group = c.benchmark_group("record");
    for (size, name) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        // Seal: the same buffer is sealed again and again (its contents do not matter).
        let mut sealer = Sealer::new(secret.clone(), NO_REKEY);
        let mut buf = vec![0xa5u8; size + OVERHEAD];
        group.bench_function(BenchmarkId::new("seal", name), |b| {
            b.iter(|| sealer.seal_data(black_box(&mut buf)).expect("seal"))
        });

        // Open: each record is sealed in the (untimed) setup by a sealer that stays in step with
        // the opener, then opened in place.
        let mut sealer = Sealer::new(secret.clone(), NO_REKEY);
        let mut opener = Opener::new(secret.clone());
        group.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter_batched_ref(
                || {
                    let mut record = vec![0xa5u8; size + OVERHEAD];
                    sealer.seal_data(&mut record).expect("seal");
                    record
                },
                |record| match opener.open(black_box(record)).expect("open") {
                    Opened::Data(plain) => plain.len(),
                    other => unreachable!("{other:?}"),
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("aead");
    let aead = Aead::new(&[0x42; KEY_LEN]);
    let nonce = [7u8; NONCE_LEN];
    let aad = [1u8; HEADER_LEN];
    for (size, name) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];
        group.bench_function(BenchmarkId::new("seal_in_place", name), |b| {
            b.iter(|| {
                aead.seal_in_place(&nonce, &aad, black_box(&mut buf))
                    .expect("seal")
            })
        });
    }

    // The RustCrypto implementation behind the same seam, for the comparison in RESULTS.md.
    let other = RustCryptoAead::new(&[0x42; KEY_LEN]);
    for (size, name) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];
        group.bench_function(BenchmarkId::new("rustcrypto_seal_in_place", name), |b| {
            b.iter(|| {
                other
                    .seal_in_place(&nonce, &aad, black_box(&mut buf))
                    .expect("seal")
            })
        });
    }
    group.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let (c_params, l_params) = params();

    let mut group = c.benchmark_group("handshake");
    // Each iteration costs milliseconds: fewer, flat samples keep a run short.
    group.sampling_mode(SamplingMode::Flat).sample_size(20);

    group.bench_function("full", |b| {
        b.iter_batched(
            || {
                (
                    c_params.clone(),
                    l_params.clone(),
                    fresh_randomness(),
                    fresh_randomness(),
                )
            },
            |(cp, lp, cr, lr)| {
                let mut c = Handshake::connector(cp, cr);
                let mut l = Handshake::listener(lp, lr);
                l.read(&c.take_output()).expect("listener reads hello");
                c.read(&l.take_output()).expect("connector reads flight");
                l.read(&c.take_output()).expect("listener reads auth");
                (
                    c.finish().expect("connector"),
                    l.finish().expect("listener"),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("listener", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_handshake(&c_params, &l_params).listener)
                .sum()
        })
    });
    group.bench_function("connector", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_handshake(&c_params, &l_params).connector)
                .sum()
        })
    });
    let stores = Stores::new();
    group.bench_function("resumed_listener", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_resumption(&c_params, &l_params, &stores).listener)
                .sum()
        })
    });
    group.bench_function("resumed_connector", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_resumption(&c_params, &l_params, &stores).connector)
                .sum()
        })
    });
    group.finish();
}

/// One exchange of PROTOCOL.md §4.5 between two fresh record layers; the time each role's calls
/// took.
fn timed_kex() -> RoleTimes {
    use sealpipe::proto::handshake::Role;
    use sealpipe::proto::kex::Kex;
    let (c_ap, l_ap) = (Secret::from_bytes([1; 32]), Secret::from_bytes([2; 32]));
    let (mut cs, mut co) = (
        Sealer::new(c_ap.clone(), 1 << 30),
        Opener::new(l_ap.clone()),
    );
    let (mut ls, mut lo) = (Sealer::new(l_ap, 1 << 30), Opener::new(c_ap));
    let (mut ck, mut lk) = (Kex::new(Role::Connector), Kex::new(Role::Listener));
    let open = |o: &mut Opener, k: &mut Kex, mut r: Vec<u8>, x: [u8; 32]| {
        let Ok(Opened::KeyShare(kind, body)) = o.open(&mut r) else {
            panic!("a record of the exchange")
        };
        let body = body.to_vec();
        k.receive(o, kind, &body, || x).expect("receive");
    };
    let t = Instant::now();
    let share = ck
        .initiate(
            &mut cs,
            fresh_randomness().ephemeral,
            mlkem::DecapsulationKey::generate(),
        )
        .expect("initiate");
    let mut connector = t.elapsed();
    let t = Instant::now();
    open(&mut lo, &mut lk, share, fresh_randomness().ephemeral);
    let reply = lk.outgoing(&mut ls).expect("reply").expect("a reply");
    let mut listener = t.elapsed();
    let t = Instant::now();
    open(&mut co, &mut ck, reply, [0; 32]);
    let done = ck.outgoing(&mut cs).expect("done").expect("a done");
    connector += t.elapsed();
    let t = Instant::now();
    open(&mut lo, &mut lk, done, [0; 32]);
    listener += t.elapsed();
    assert_eq!((ck.completed(), lk.completed()), (1, 1));
    RoleTimes {
        connector,
        listener,
    }
}

fn bench_kex(c: &mut Criterion) {
    let mut group = c.benchmark_group("kex");
    group.bench_function("exchange", |b| b.iter(timed_kex));
    group.bench_function("connector", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| timed_kex().connector).sum())
    });
    group.bench_function("listener", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| timed_kex().listener).sum())
    });
    group.finish();
}

fn bench_references(c: &mut Criterion) {
    let key = PrivateIdentity::from_pem(LISTENER_PEM).expect("listener test key");
    let public = key.public().clone();
    // What the handshake signs: a context string and a transcript hash.
    let msg = [CONNECTOR_SIGNATURE_CONTEXT, &hash(b"transcript")].concat();
    let sig = key.sign(&msg).expect("sign");

    let mut group = c.benchmark_group("reference");
    group.bench_function("rsa2048_pss_sign", |b| {
        b.iter(|| key.sign(black_box(&msg)).expect("sign"))
    });
    group.bench_function("rsa2048_pss_verify", |b| {
        b.iter(|| {
            public
                .verify(black_box(&msg), black_box(&sig))
                .expect("verify")
        })
    });

    // Parsing a peer's key as it arrives in an auth message (every full handshake, both sides).
    let spki = public.spki_der().to_vec();
    group.bench_function("rsa2048_spki_parse", |b| {
        b.iter(|| PublicIdentity::from_spki_der(black_box(&spki)).expect("parse"))
    });
    // ML-KEM-768: the connector's key pair and decapsulation, the listener's encapsulation.
    group.bench_function("mlkem768_keygen", |b| {
        b.iter(mlkem::DecapsulationKey::generate)
    });
    let dk = mlkem::DecapsulationKey::generate();
    let ek = *dk.encapsulation_key();
    group.bench_function("mlkem768_encapsulate", |b| {
        b.iter(|| mlkem::encapsulate(black_box(&ek)).expect("encapsulate"))
    });

    // What the handshake uses (aws-lc-rs behind `proto::x25519`), then x25519-dalek, the
    // reference it is cross-checked against.
    let ours = fresh_randomness().ephemeral;
    let theirs_bytes = x25519::public_key(&fresh_randomness().ephemeral);
    group.bench_function("x25519_public_key", |b| {
        b.iter(|| x25519::public_key(black_box(&ours)))
    });
    group.bench_function("x25519_exchange", |b| {
        b.iter(|| x25519::shared(black_box(&ours), black_box(&theirs_bytes)))
    });
    let theirs = PublicKey::from(theirs_bytes);
    group.bench_function("x25519_exchange_dalek", |b| {
        b.iter(|| StaticSecret::from(*black_box(&ours)).diffie_hellman(black_box(&theirs)))
    });

    let shared = [0x33u8; 32];
    let hellos = hash(b"hellos");
    let transcript = hash(b"transcript");
    group.bench_function("key_schedule", |b| {
        b.iter(|| {
            let hs = HandshakeSecrets::new(None, black_box(&shared), black_box(&shared));
            let c_hs = hs.traffic(Direction::ConnectorToListener, &hellos);
            let l_hs = hs.traffic(Direction::ListenerToConnector, &hellos);
            let master = hs.master();
            let c_ap = master.traffic(Direction::ConnectorToListener, &transcript);
            let l_ap = master.traffic(Direction::ListenerToConnector, &transcript);
            (c_hs, l_hs, c_ap, l_ap)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_records,
    bench_handshake,
    bench_kex,
    bench_references
);
criterion_main!(benches);
