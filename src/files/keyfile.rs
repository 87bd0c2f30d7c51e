//! Key files: the I/O edge between the file system and [`crate::proto::identity`].
//!
//! * [`load_private_key`] reads our PKCS#8 or PKCS#1 PEM private key. Like OpenSSH, it refuses
//!   a file that its group or other users can read, write or execute (`mode & 0o077 != 0`).
//! * [`load_any_public`] reads a `BEGIN PUBLIC KEY` (SPKI) PEM, or a private key's public half.
//! * [`load_any_public`] reads either kind, for `sealpipe fingerprint FILE`.
//! * [`write_keypair`] is `sealpipe keygen`: a new key in `FILE` (mode 0600 from the moment it
//!   exists, never overwriting anything) and its public half in `FILE.pub`.
//! * [`load_psk`] reads an optional 32-byte pre-shared key, with the same permission rule.
//!
//! Every error names the file. Buffers that held secret file contents are zeroized.

use crate::files::atomic::parent_dir;
use crate::files::io_problem;
use crate::proto::identity::{IdentityError, PrivateIdentity, PublicIdentity};
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The largest key or PSK file we read (a PEM 8192-bit private key is about 6.5 KiB).
const MAX_KEY_FILE_LEN: usize = 64 * 1024;

/// Why a key file could not be read or written. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyFileError {
    /// The file could not be opened, read or written.
    #[error("{}: {}", .path.display(), io_problem(.error, "a key file"))]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error (not a `source`: the message says it once).
        error: io::Error,
    },
    /// Not a regular file (a FIFO, a device, a socket).
    #[error("{}: not a regular file", .path.display())]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// `keygen` into a directory that does not exist.
    #[error(
        "{}: the directory {} {}",
        .path.display(),
        .dir.display(),
        if .dir.exists() { "is not a directory" } else { "does not exist; create it first" }
    )]
    NoDirectory {
        /// The file to write.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// A private key or PSK file that other users may access.
    #[error(
        "{}: {what} is readable by group or others (mode {mode:04o}); run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// What it holds: "private key", "PSK file".
        what: &'static str,
        /// Its permission bits (`mode & 0o7777`).
        mode: u32,
    },
    /// The file is too large to be a key file.
    #[error("{}: too large to be a key file (over {MAX_KEY_FILE_LEN} bytes)", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not text.
    #[error("{}: not a text (PEM) file", .path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// The key in the file was refused.
    #[error("{}: {error}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why the key was refused (not a `source`: the message says it once).
        error: IdentityError,
    },
    /// Neither a public nor a private key PEM.
    #[error(
        "{}: not a key file: expected `BEGIN PUBLIC KEY`, `BEGIN PRIVATE KEY` or \
         `BEGIN RSA PRIVATE KEY`{}",
        .path.display(),
        .found.as_ref().map(|l| format!(", found `BEGIN {l}`")).unwrap_or_default()
    )]
    NotAKey {
        /// The file.
        path: PathBuf,
        /// The PEM label that was found, if the file was PEM at all.
        found: Option<String>,
    },
    /// `keygen` would overwrite an existing file.
    #[error("{}: already exists; refusing to overwrite it (remove it or choose another --out)", .path.display())]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The pre-shared key file's contents are not a 32-byte key.
    #[error(
        "{}: {problem}; a pre-shared key is 32 random bytes written as base64 \
         (`openssl rand -base64 32`) or as 64 hex digits (`openssl rand -hex 32`)",
        .path.display()
    )]
    BadPsk {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the contents).
        problem: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |error| KeyFileError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Reads a whole (small, text) file into a zeroizing string; a secret one (`secret`: what it
/// holds, for the message) is refused if group or others have any permission on it. The
/// permission check is made on the opened file.
fn read_text(path: &Path, secret: Option<&'static str>) -> Result<Zeroizing<String>, KeyFileError> {
    // Before opening: a FIFO would block the open, and a directory opens fine.
    let kind = std::fs::metadata(path).map_err(io_err(path))?.file_type();
    if kind.is_dir() {
        return Err(io_err(path)(io::ErrorKind::IsADirectory.into()));
    }
    if !kind.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(io_err(path))?;
    let metadata = file.metadata().map_err(io_err(path))?;
    if let Some(what) = secret {
        check_private_mode(path, &metadata, what)?;
    }
    // Allocated once, up front: a growing Vec would leave unzeroized copies behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE_LEN + 1));
    file.take(MAX_KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    if std::str::from_utf8(&buf).is_err() {
        return Err(KeyFileError::NotText {
            path: path.to_owned(),
        });
    }
    let bytes = std::mem::take(&mut *buf);
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Zeroizing::new(text)),
        // Checked above; zeroize anyway should it ever happen.
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(KeyFileError::NotText {
                path: path.to_owned(),
            })
        }
    }
}

#[cfg(unix)]
fn check_private_mode(
    path: &Path,
    metadata: &std::fs::Metadata,
    what: &'static str,
) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            what,
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(
    _path: &Path,
    _metadata: &std::fs::Metadata,
    _what: &'static str,
) -> Result<(), KeyFileError> {
    Ok(())
}

fn key_err(path: &Path) -> impl FnOnce(IdentityError) -> KeyFileError + '_ {
    move |error| KeyFileError::Key {
        path: path.to_owned(),
        error,
    }
}

/// Reads a private key file (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`).
///
/// On Unix, refuses a file whose mode has any group/other bit (`mode & 0o077 != 0`), with a
/// message like:
///
/// ```text
/// /etc/sealpipe/a.pem: private key is readable by group or others (mode 0644); run `chmod 600 /etc/sealpipe/a.pem`
/// ```
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateIdentity, KeyFileError> {
    let text = read_text(path, Some("private key"))?;
    PrivateIdentity::from_pem(&text).map_err(key_err(path))
}

/// For `sealpipe fingerprint FILE`: accepts a private key (PKCS#8 or PKCS#1; no permission
/// check, since nothing secret is used) or an SPKI public key PEM, and returns the public key.
pub(crate) fn load_any_public(path: &Path) -> Result<PublicIdentity, KeyFileError> {
    let text = read_text(path, None)?;
    match PublicIdentity::from_pem(&text) {
        Ok(public) => Ok(public),
        Err(IdentityError::NotPublicKeyPem { found }) => match found.as_deref() {
            Some("PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY") => {
                PrivateIdentity::from_pem(&text)
                    .map(|private| private.public().clone())
                    .map_err(key_err(path))
            }
            _ => Err(KeyFileError::NotAKey {
                path: path.to_owned(),
                found,
            }),
        },
        Err(e) => Err(key_err(path)(e)),
    }
}

/// `FILE` with `.pub` appended to its name.
fn pub_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Creates `path` (which must not exist) with `mode` on Unix and writes `contents` to it.
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(io_err(path)(e));
    }
    Ok(())
}

/// For `sealpipe keygen --out FILE --bits N`: generates a key pair and writes `FILE` (PKCS#8
/// PEM, created with mode 0600 from the start) and `FILE.pub` (SPKI PEM, mode 0644 less the
/// umask). Refuses to overwrite either file; checks that before the (slow) generation. Returns
/// the identity.
pub(crate) fn write_keypair(out: &Path, bits: usize) -> Result<PrivateIdentity, KeyFileError> {
    let dir = parent_dir(out);
    if !dir.is_dir() {
        return Err(KeyFileError::NoDirectory {
            path: out.to_owned(),
            dir: dir.to_owned(),
        });
    }
    let pub_out = pub_path(out);
    for path in [out, pub_out.as_path()] {
        // symlink_metadata: a dangling symlink also counts as existing.
        if path.symlink_metadata().is_ok() {
            return Err(KeyFileError::AlreadyExists {
                path: path.to_owned(),
            });
        }
    }
    let (identity, pem) = PrivateIdentity::generate(bits).map_err(key_err(out))?;
    create_new(out, pem.as_bytes(), 0o600)?;
    let public_pem = identity.public().to_pem();
    if let Err(e) = create_new(&pub_out, public_pem.as_bytes(), 0o644) {
        // Leave no half-written key pair behind.
        let _ = std::fs::remove_file(out);
        return Err(e);
    }
    Ok(identity)
}

/// Reads a pre-shared key file: the standard base64 (padded or not) or 64-hex-digit encoding of
/// exactly 32 bytes, surrounding whitespace ignored. The same permission rule as
/// [`load_private_key`] applies.
pub(crate) fn load_psk(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let bad = |problem: String| KeyFileError::BadPsk {
        path: path.to_owned(),
        problem,
    };
    let text = match read_text(path, Some("PSK file")) {
        Err(KeyFileError::NotText { .. }) => return Err(bad("the file is not text".into())),
        other => other?,
    };
    decode_psk(text.trim()).map_err(bad)
}

/// Decodes a PSK; the error never contains the input.
fn decode_psk(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut key = Zeroizing::new([0u8; 32]);
    if text.is_empty() {
        return Err("the file is empty".into());
    }
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (out, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            *out = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
        }
        return Ok(key);
    }
    // Base64 of 32 bytes is 43 characters, 44 with its `=`.
    let mut buf = Zeroizing::new([0u8; 48]);
    match STANDARD_PAD_INDIFFERENT.decode_slice(text.as_bytes(), &mut buf[..]) {
        Ok(32) => {
            key.copy_from_slice(&buf[..32]);
            Ok(key)
        }
        Ok(n) => Err(format!("the key is {n} bytes long, not 32")),
        Err(_) if text.len() > 64 => Err(format!(
            "the key is {} characters long, too long for 32 bytes",
            text.len()
        )),
        Err(_) => Err("the contents are neither base64 nor 64 hex digits".into()),
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

    fn data(name: &str) -> PathBuf {
        Path::new(DATA).join(name)
    }

    fn openssl_fp() -> crate::proto::identity::Fingerprint {
        std::fs::read_to_string(data("openssl-rsa2048.fingerprint"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Copies a test file into `dir` with `mode` (git does not keep modes).
    fn copy_with_mode(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let dst = dir.join(name);
        std::fs::copy(data(name), &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
        dst
    }

    fn write_with_mode(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let ok = copy_with_mode(dir.path(), "openssl-rsa2048.pem", 0o600);
        assert_eq!(load_private_key(&ok).unwrap().fingerprint(), openssl_fp());
        let ro = copy_with_mode(dir.path(), "openssl-rsa2048-pkcs1.pem", 0o400);
        assert_eq!(load_private_key(&ro).unwrap().fingerprint(), openssl_fp());

        for mode in [0o644, 0o640, 0o604, 0o660, 0o601, 0o610] {
            std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = load_private_key(&ok).unwrap_err();
            assert!(
                matches!(err, KeyFileError::Permissions { mode: m, .. } if m == mode),
                "{err}"
            );
        }
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = ok.display();
        assert_eq!(
            load_private_key(&ok).unwrap_err().to_string(),
            format!(
                "{p}: private key is readable by group or others (mode 0644); run `chmod 600 {p}`"
            )
        );
        // `fingerprint` does not care about permissions.
        assert_eq!(load_any_public(&ok).unwrap().fingerprint(), openssl_fp());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = load_private_key(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Io { .. }));
        assert!(err.to_string().starts_with(&missing.display().to_string()));

        let small = copy_with_mode(dir.path(), "openssl-rsa1024.pem", 0o600);
        let err = load_private_key(&small).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: RSA key is 1024 bits; sealpipe requires at least 2048",
                small.display()
            )
        );

        let garbage = write_with_mode(dir.path(), "garbage", "hello\n", 0o600);
        let err = load_private_key(&garbage).unwrap_err();
        assert!(err.to_string().starts_with(&garbage.display().to_string()));
        assert!(err.to_string().contains("BEGIN PRIVATE KEY"), "{err}");
        let err = load_any_public(&garbage).unwrap_err();
        assert!(
            matches!(err, KeyFileError::NotAKey { found: None, .. }),
            "{err}"
        );

        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff, 0xfe, 0]).unwrap();
        assert!(matches!(
            load_any_public(&binary),
            Err(KeyFileError::NotText { .. })
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_KEY_FILE_LEN + 1]).unwrap();
        assert!(matches!(
            load_any_public(&big),
            Err(KeyFileError::TooLarge { .. })
        ));
    }

    #[test]
    fn public_and_any_keys() {
        let pub_path = data("openssl-rsa2048.pub.pem");
        assert_eq!(
            load_any_public(&pub_path).unwrap().fingerprint(),
            openssl_fp()
        );
        // A private key's public half, PKCS#8 or PKCS#1.
        assert_eq!(
            load_any_public(&data("openssl-rsa2048.pem"))
                .unwrap()
                .fingerprint(),
            openssl_fp()
        );
        assert_eq!(
            load_any_public(&data("openssl-rsa2048-pkcs1.pem"))
                .unwrap()
                .fingerprint(),
            openssl_fp()
        );
        let err = load_any_public(&data("openssl-rsa1024.pem")).unwrap_err();
        assert!(err.to_string().contains("1024 bits"), "{err}");
    }

    #[test]
    fn keygen_writes_0600_key_and_pub_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("node.pem");
        let id = write_keypair(&out, 2048).unwrap();
        let pub_out = dir.path().join("node.pem.pub");
        assert_eq!(mode_of(&out), 0o600);
        assert_eq!(mode_of(&pub_out) & 0o600, 0o600);
        assert_eq!(mode_of(&pub_out) & 0o022, 0);
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let pub_text = std::fs::read_to_string(&pub_out).unwrap();
        assert!(pub_text.starts_with("-----BEGIN PUBLIC KEY-----\n"));

        let loaded = load_private_key(&out).unwrap();
        assert_eq!(loaded.fingerprint(), id.fingerprint());
        assert_eq!(
            load_any_public(&pub_out).unwrap().fingerprint(),
            id.fingerprint()
        );
        assert_eq!(
            load_any_public(&out).unwrap().fingerprint(),
            id.fingerprint()
        );
        assert_eq!(id.public().bits(), 2048);

        // Refuses to overwrite, and leaves the files alone.
        let err = write_keypair(&out, 2048).unwrap_err();
        assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
        // Also when only FILE.pub exists.
        let other = dir.path().join("other.pem");
        std::fs::write(pub_path(&other), "x").unwrap();
        assert!(matches!(
            write_keypair(&other, 2048),
            Err(KeyFileError::AlreadyExists { .. })
        ));
        assert!(!other.exists());
        // Bad sizes are refused before anything is written.
        let small = dir.path().join("small.pem");
        let err = write_keypair(&small, 1024).unwrap_err();
        assert!(err.to_string().contains("between 2048 and 8192"), "{err}");
        assert!(!small.exists());
    }

    #[test]
    fn keygen_output_matches_openssl_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k.pem");
        let id = write_keypair(&out, 2048).unwrap();
        let openssl = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "openssl pkey -in \"$0\" -pubout -outform DER | openssl dgst -sha256 -binary | base64",
            )
            .arg(&out)
            .output();
        match openssl {
            Ok(o) if o.status.success() => {
                let b64 = String::from_utf8(o.stdout).unwrap();
                let fp: crate::proto::identity::Fingerprint =
                    format!("SHA256:{}", b64.trim()).parse().unwrap();
                assert_eq!(fp, id.fingerprint());
            }
            _ => eprintln!("openssl not available; skipped"),
        }
    }

    #[test]
    fn psk_files() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let b64_nopad = b64.trim_end_matches('=').to_owned();
        for (i, contents) in [
            hex.clone(),
            hex.to_uppercase(),
            format!("\n  {hex}\n\n"),
            b64.clone(),
            format!("{b64}\n"),
            b64_nopad,
        ]
        .iter()
        .enumerate()
        {
            let path = write_with_mode(dir.path(), &format!("ok{i}"), contents, 0o600);
            assert_eq!(*load_psk(&path).unwrap(), bytes, "{contents:?}");
        }

        let short_b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        let long_b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 33]);
        let long_hex = "ab".repeat(33);
        for (i, contents) in [
            "",
            "\n",
            &hex[..62],
            &long_hex,
            &short_b64,
            &long_b64,
            "not base64 at all!",
            &format!("{hex} {hex}"),
        ]
        .iter()
        .enumerate()
        {
            let path = write_with_mode(dir.path(), &format!("bad{i}"), contents, 0o600);
            let err = load_psk(&path).unwrap_err();
            assert!(
                matches!(err, KeyFileError::BadPsk { .. }),
                "{contents:?}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            assert!(msg.contains("32 random bytes"), "{msg}");
            if contents.len() > 8 {
                assert!(!msg.contains(&contents[..8]), "leaks contents: {msg}");
            }
        }

        let loose = write_with_mode(dir.path(), "loose", &hex, 0o644);
        assert!(matches!(
            load_psk(&loose),
            Err(KeyFileError::Permissions { mode: 0o644, .. })
        ));
    }
}
