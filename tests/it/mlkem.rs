//! ML-KEM-768 cross-checked against the RustCrypto `ml-kem` crate (a dev-dependency, the
//! reference kept beside aws-lc-rs as `x25519-dalek` and `chacha20poly1305` are): sealpipe's
//! aws-lc-rs path (`proto::mlkem`) encapsulates to RustCrypto keys and decapsulates RustCrypto
//! ciphertexts, and both libraries decapsulate the fixed ciphertext of the PROTOCOL.md §8
//! vectors (`tests/data/mlkem768-{dk,ct}.bin`) to the same shared secret.

use ml_kem::array::Array;
use ml_kem::{
    Ciphertext, Decapsulate, DecapsulationKey, Encapsulate, EncapsulationKey, KeyExport, MlKem768,
    Seed,
};
use sealpipe::proto::mlkem::{self, CT_LEN, DK_LEN, EK_LEN};

type RcDecapsulationKey = DecapsulationKey<MlKem768>;
type RcEncapsulationKey = EncapsulationKey<MlKem768>;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A RustCrypto decapsulation key from a fixed 64-byte seed (FIPS 203 `d ‖ z`).
fn rc_key(tag: u8) -> RcDecapsulationKey {
    let seed: Seed = Array::from_fn(|i| tag ^ (i as u8).wrapping_mul(29));
    RcDecapsulationKey::from_seed(seed)
}

fn rc_ciphertext(ct: &[u8]) -> Ciphertext<MlKem768> {
    Array::try_from(ct).expect("an ML-KEM-768 ciphertext")
}

#[test]
fn aws_lc_encapsulates_to_rustcrypto_keys() {
    for tag in [0u8, 1, 0x5a, 0xff] {
        let dk = rc_key(tag);
        let ek = dk.encapsulation_key().to_bytes();
        let ek: &[u8; EK_LEN] = ek.as_slice().try_into().unwrap();
        let (ct, ss) = mlkem::encapsulate(ek).unwrap();
        assert_eq!(ct.len(), CT_LEN);
        let rc_ss = dk.decapsulate(&rc_ciphertext(&ct[..]));
        assert_eq!(rc_ss.as_slice(), ss.as_bytes(), "seed tag {tag:#04x}");
    }
}

#[test]
fn rustcrypto_encapsulates_to_aws_lc_keys() {
    let mut rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
    for _ in 0..4 {
        let dk = mlkem::DecapsulationKey::generate();
        let ek = RcEncapsulationKey::new(&Array::from(*dk.encapsulation_key()))
            .expect("aws-lc's encapsulation key is valid for RustCrypto");
        let (ct, rc_ss) = ek.encapsulate_with_rng(&mut rng);
        let ct: [u8; CT_LEN] = ct.as_slice().try_into().unwrap();
        let ss = dk.decapsulate(&ct).unwrap();
        assert_eq!(ss.as_bytes(), rc_ss.as_slice());
    }
}

#[test]
fn both_libraries_decapsulate_the_fixed_vector_alike() {
    let dk_bytes = data("mlkem768-dk.bin");
    let ct = data("mlkem768-ct.bin");
    assert_eq!((dk_bytes.len(), ct.len()), (DK_LEN, CT_LEN));

    // sealpipe (aws-lc-rs).
    let ours = mlkem::DecapsulationKey::from_bytes(&dk_bytes).expect("fixed ML-KEM key");
    let ours_ek = *ours.encapsulation_key();
    let ct_arr: [u8; CT_LEN] = ct.as_slice().try_into().unwrap();
    let ours_ss = ours.decapsulate(&ct_arr).unwrap();

    // RustCrypto, from the same FIPS 203 expanded encoding (dk_pke ‖ ek ‖ H(ek) ‖ z).
    #[allow(deprecated)]
    let theirs = {
        use ml_kem::ExpandedKeyEncoding;
        RcDecapsulationKey::from_expanded_bytes(&Array::try_from(dk_bytes.as_slice()).unwrap())
            .expect("RustCrypto accepts the fixed key")
    };
    assert_eq!(
        theirs.encapsulation_key().to_bytes().as_slice(),
        &ours_ek[..],
        "the same encapsulation key"
    );
    let theirs_ss = theirs.decapsulate(&rc_ciphertext(&ct));
    assert_eq!(ours_ss.as_bytes(), theirs_ss.as_slice());

    // And it is the shared secret of the PROTOCOL.md §8 vectors.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();
    let hex: String = theirs_ss.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        doc.lines()
            .any(|l| l == format!("    mlkem_shared_secret = {hex}")),
        "PROTOCOL.md §8 has another mlkem_shared_secret than {hex}"
    );

    // A changed ciphertext: both reject implicitly, to the same pseudorandom secret.
    let mut bad = ct_arr;
    bad[0] ^= 1;
    let ours_bad = mlkem::DecapsulationKey::from_bytes(&dk_bytes)
        .unwrap()
        .decapsulate(&bad)
        .unwrap();
    let theirs_bad = theirs.decapsulate(&rc_ciphertext(&bad));
    assert_eq!(ours_bad.as_bytes(), theirs_bad.as_slice());
    assert_ne!(ours_bad.as_bytes(), ours_ss.as_bytes());
}
