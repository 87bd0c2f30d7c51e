//! The serde layer: what a config file holds before validation, every leaf [`Spanned`] so that
//! an error can point at its value.
//!
//! Every struct has `deny_unknown_fields`. The tuning keys are repeated in each struct that
//! takes them (`[defaults]`, `[[listener]]`, `[[connector]]`) by `with_tuning!`, from the one
//! list in `super::tuning_fields`, because serde's `flatten` cannot be combined with
//! `deny_unknown_fields`. Sizes and durations are kept as written ([`SizeText`],
//! [`DurationText`]) until validated.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use toml::Spanned;

use super::tuning_fields::tuning_fields;

/// Adds the tuning keys, as `Option<Spanned<RAW>>`, after the struct's own fields (so that an
/// unknown key's message lists the own keys first), and a `tuning()` that copies them out.
/// Called by `tuning_fields!` with the struct and the list of tuning keys.
macro_rules! with_tuning {
    (
        {
            $(#[$meta:meta])*
            struct $name:ident { $($own:ident : $own_ty:ty,)* }
        }
        $(
            $(#[$doc:meta])*
            $field:ident : $ty:ty = $default:expr, parsed from $raw:ident by $parse:ident;
        )*
    ) => {
        $(#[$meta])*
        pub(crate) struct $name {
            $(pub(crate) $own: $own_ty,)*
            $(pub(crate) $field: Option<Spanned<$raw>>,)*
        }

        impl $name {
            /// The tuning keys set in this section.
            pub(crate) fn tuning(&self) -> RawTuning {
                RawTuning {
                    $($field: self.$field.clone(),)*
                }
            }
        }
    };
}

/// A whole config file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub(crate) identity: Option<Spanned<RawIdentity>>,
    pub(crate) defaults: Option<RawTuning>,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "connector")]
    pub(crate) connectors: Vec<Spanned<RawConnector>>,
    pub(crate) metrics: Option<Spanned<RawMetrics>>,
    pub(crate) control: Option<Spanned<RawControl>>,
}

/// The top-level `control` key: `false`, `true` or a socket path.
#[derive(Deserialize)]
#[serde(untagged, expecting = "false, true or the path of the control socket")]
pub(crate) enum RawControl {
    On(bool),
    Socket(String),
}

/// `[metrics]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawMetrics {
    pub(crate) listen: Spanned<String>,
}

/// `[identity]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawIdentity {
    pub(crate) private_key: Spanned<String>,
    pub(crate) psk_file: Option<Spanned<String>>,
    pub(crate) next_private_key: Option<Spanned<String>>,
}

tuning_fields!(with_tuning! {
    /// `[defaults]`, and the tuning keys of one tunnel.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawTuning {}
});

tuning_fields!(with_tuning! {
    /// One `[[listener]]`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawListener {
        name: Spanned<String>,
        service: Option<Spanned<String>>,
        listen: Spanned<String>,
        forward: Option<Spanned<String>>,
        peers: Option<Spanned<Vec<Spanned<String>>>>,
        peers_file: Option<Spanned<String>>,
        accept_unknown: Option<Spanned<bool>>,
        allow_tofu: Option<Spanned<bool>>,
        allow_destinations: Option<Spanned<Vec<Spanned<String>>>>,
        proxy_protocol: Option<Spanned<String>>,
        revoke: Option<Spanned<String>>,
    }
});

tuning_fields!(with_tuning! {
    /// One `[[connector]]`.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table")]
    struct RawConnector {
        name: Spanned<String>,
        service: Option<Spanned<String>>,
        listen: Spanned<String>,
        connect: Spanned<String>,
        peer: Spanned<RawPeer>,
        socket_mode: Option<Spanned<String>>,
        socket_group: Option<Spanned<String>>,
        known_peers: Option<Spanned<String>>,
        mode: Option<Spanned<String>>,
    }
});

/// A connector's `peer`: one string (a fingerprint or `"tofu"`) or a list of fingerprints, each
/// entry spanned (an untagged enum would lose the spans inside the list).
pub(crate) enum RawPeer {
    One(String),
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawPeer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawPeer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fingerprint \"SHA256:...\", a list of fingerprints, or \"tofu\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPeer, E> {
                Ok(RawPeer::One(v.to_string()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawPeer, A::Error> {
                let mut list = Vec::new();
                while let Some(entry) = seq.next_element::<Spanned<String>>()? {
                    list.push(entry);
                }
                Ok(RawPeer::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size: a string for `bytesize` or a bare integer (bytes). Kept as written until validated.
#[derive(Clone)]
pub(crate) enum SizeText {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"16KiB\" or \"1GiB\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeText, E> {
                Ok(SizeText::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeText, E> {
                i64::try_from(v)
                    .map(SizeText::Int)
                    .map_err(|_| E::custom(format!("{v} is too large for a size")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeText, E> {
                Ok(SizeText::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration string for `humantime`, kept as written until validated.
#[derive(Clone)]
pub(crate) struct DurationText(pub(crate) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"10s\", \"500ms\" or \"1h 30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}
