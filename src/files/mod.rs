//! Files on disk: key files, atomic writes under a directory lock, the connector's
//! `known_peers` store and the listener's peers file.

pub(crate) mod enroll;
pub(crate) mod keyfile;
