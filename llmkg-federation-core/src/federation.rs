//! Federation identifiers.
//!
//! A [`FederationId`] names one federation. Both ends of a connection must agree on it, and
//! every federation-scoped signature ([`Signed`](crate::Signed)) is bound to one, so a
//! signature made in one federation is refused in another.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Names a federation; peers and signed envelopes of another federation are refused.
///
/// ```
/// use llmkg_federation_core::FederationId;
/// assert_eq!(FederationId::from_name("acme"), FederationId::from_name("acme"));
/// assert_ne!(FederationId::from_name("acme"), FederationId::from_name("other"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FederationId([u8; 32]);

impl FederationId {
    /// The key-derivation context of [`from_name`](Self::from_name). It keeps the value it had
    /// when the type lived in the transport crate, so existing ids do not change.
    const NAME_CONTEXT: &'static str = "llmkg/transport/federation-id/v1";

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The id derived from a human-readable federation name (a keyed BLAKE3 hash).
    pub fn from_name(name: &str) -> Self {
        Self(blake3::derive_key(Self::NAME_CONTEXT, name.as_bytes()))
    }

    /// The id bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for FederationId {
    /// Lower-case hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::encoding::fmt_hex(&self.0, f)
    }
}

impl fmt::Debug for FederationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_string();
        write!(f, "FederationId({})", hex.get(..8).unwrap_or(&hex))
    }
}
