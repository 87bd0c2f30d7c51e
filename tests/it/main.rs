//! The integration tests: one binary (`cargo test --test it`), one module per area. What each
//! module covers is in `tests/README.md`; [`support`] is what they share (keys, daemons, an
//! active adversary). Run one area with `cargo test --test it AREA::`.

#[macro_use]
mod support;

mod admission;
mod bench;
mod boundary;
mod check;
mod daemon;
mod dos;
mod enroll;
mod faults;
mod feature_combinations;
mod handshake;
mod kex;
mod layers;
mod liveness;
mod load;
mod manual;
mod metrics;
mod misconfiguration;
mod mitm;
mod mlkem;
mod paper_cuts;
mod pool_admission;
mod records;
mod redirect;
mod resume;
mod reuse;
mod review;
mod rotation;
mod service;
mod sessions;
mod socket_activation;
mod status;
mod streaminfo;
mod unix;
mod vectors;
