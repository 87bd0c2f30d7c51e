//! Trust lists: the set of connector fingerprints a listener accepts, built in memory (the
//! `peers` and `peers_file` of its config are read by `crate::files::peers`).

use std::collections::BTreeMap;

use super::Fingerprint;

/// A set of trusted fingerprints, each with an optional name (for logs).
#[derive(Clone, Debug, Default)]
pub struct TrustList {
    entries: BTreeMap<Fingerprint, Option<String>>,
}

impl TrustList {
    /// An empty trust list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fingerprint; a fingerprint already present gets the new name.
    pub fn insert(&mut self, fp: Fingerprint, name: Option<String>) {
        self.entries.insert(fp, name);
    }

    /// Whether `fp` is trusted.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.entries.contains_key(fp)
    }

    /// The name given to a trusted fingerprint, if any.
    pub fn name_of(&self, fp: &Fingerprint) -> Option<&str> {
        self.entries.get(fp).and_then(|n| n.as_deref())
    }

    /// The number of trusted fingerprints.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The trusted fingerprints and their names, in fingerprint order.
    pub fn iter(&self) -> impl Iterator<Item = (&Fingerprint, Option<&str>)> {
        self.entries.iter().map(|(fp, name)| (fp, name.as_deref()))
    }
}

impl FromIterator<(Fingerprint, Option<String>)> for TrustList {
    fn from_iter<I: IntoIterator<Item = (Fingerprint, Option<String>)>>(iter: I) -> Self {
        TrustList {
            entries: iter.into_iter().collect(),
        }
    }
}
