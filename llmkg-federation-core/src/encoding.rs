//! Canonical encoding, content hashing and content ids.
//!
//! Every hashed or signed value is encoded with [postcard] from its serde shape. The shapes in
//! this crate use no maps with unspecified order, no floats and no skipped fields, and their
//! decoders reject non-canonical forms, so one value has exactly one encoding on any machine.
//!
//! Decoding never panics, rejects trailing bytes, and allocates at most a small multiple of the
//! input length: strings and byte strings are copied from the input, and sequences
//! pre-allocate at most serde's cautious bound (1 MiB) before their elements are actually read.
//! Inputs longer than [`MAX_ENCODED_LEN`] are refused before decoding starts.

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Largest encoded value this crate decodes: 256 MiB.
pub const MAX_ENCODED_LEN: usize = 256 << 20;

/// Bytes could not be decoded into the expected type. Nothing was constructed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is longer than the decoder accepts.
    #[error("encoded value of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the type (truncated, bad tag, bad length,
    /// invalid UTF-8, a value rejected by its constructor, ...).
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The type being decoded.
        what: &'static str,
        /// The decoder's explanation.
        reason: String,
    },
    /// The bytes decode to a value whose canonical encoding differs from them (for example a
    /// length written as a non-minimal varint). Accepting them would give one value two
    /// content ids.
    #[error("non-canonical encoding of {what}")]
    NonCanonical {
        /// The type being decoded.
        what: &'static str,
    },
    /// A value decoded but bytes were left over.
    #[error("malformed {what}: {extra} trailing bytes")]
    TrailingBytes {
        /// The type being decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
}

/// The types this crate encodes infallibly: its own value types, whose serde shapes always
/// carry their lengths (the only thing postcard's serializer can refuse) and use no maps of
/// unspecified order.
///
/// The trait is sealed: it cannot be implemented outside this crate, so [`encode`] cannot be
/// called on a foreign type. Encode anything else with [`try_encode`].
pub trait Canonical: Serialize + sealed::Sealed {}

pub(crate) mod sealed {
    /// Implemented only for this crate's types (see [`Canonical`](super::Canonical)).
    pub trait Sealed {}
}

/// Implements [`Canonical`] for this crate's types.
macro_rules! canonical {
    ($($t:ty),* $(,)?) => {
        $(
            impl $crate::encoding::sealed::Sealed for $t {}
            impl $crate::encoding::Canonical for $t {}
        )*
    };
}
pub(crate) use canonical;

canonical!(
    crate::Term,
    crate::Triple,
    crate::ChangeSet,
    crate::Iri,
    crate::Literal,
    crate::BlankNode,
    crate::LanguageTag,
    crate::Commit,
    crate::NodeId,
    crate::OrgId,
    crate::Timestamp,
    crate::BranchName,
    crate::FederationId,
    crate::merkle::NibblePath,
    crate::merkle::SubtreeSummary,
    crate::merkle::MerkleProof,
    crate::snapshot::SnapshotManifest,
    crate::snapshot::SnapshotChunk,
);

impl<A: Canonical, B: Canonical> sealed::Sealed for (A, B) {}
impl<A: Canonical, B: Canonical> Canonical for (A, B) {}
impl<A: Canonical, B: Canonical, C: Canonical> sealed::Sealed for (A, B, C) {}
impl<A: Canonical, B: Canonical, C: Canonical> Canonical for (A, B, C) {}

impl<T: Canonical + ?Sized> sealed::Sealed for &T {}
impl<T: Canonical + ?Sized> Canonical for &T {}
impl<T: Canonical> sealed::Sealed for [T] {}
impl<T: Canonical> Canonical for [T] {}
impl<T: Canonical> sealed::Sealed for Vec<T> {}
impl<T: Canonical> Canonical for Vec<T> {}
impl<T: Canonical> sealed::Sealed for Option<T> {}
impl<T: Canonical> Canonical for Option<T> {}

/// Encodes `value` canonically. Only this crate's types can be encoded this way (see
/// [`Canonical`]); use [`try_encode`] for any other type.
pub fn encode<T: Canonical + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// [`encode`] into a buffer sized exactly, plus `room` spare bytes for what the caller
/// appends: one more pass over the value, but a large value (a commit of many triples) is
/// never held twice while its buffer grows.
pub(crate) fn encode_sized<T: Canonical + ?Sized>(value: &T, room: usize) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    let mut out = Vec::with_capacity(size.saturating_add(room));
    encode_into(value, &mut out);
    out
}

/// Why a value could not be encoded (see [`try_encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} cannot be encoded canonically: {reason}")]
pub struct EncodeError {
    /// The value's type.
    pub what: &'static str,
    /// What the encoder refused.
    pub reason: String,
}

/// Encodes a value whose `Serialize` implementation this crate does not control — a
/// protocol core's message, say — reporting what the encoder refuses (a sequence of unknown
/// length, for instance) instead of panicking. Values of this crate's own types always
/// encode; use [`encode`] for those.
pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_extend(value, Vec::new())
        .map_err(|e| EncodeError { what: short_type_name::<T>(), reason: e.to_string() })
}

/// Appends the canonical encoding of `value` to `out`. Only this crate's types (see
/// [`Canonical`]).
pub fn encode_into<T: Canonical + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let taken = std::mem::take(out);
    match postcard::to_extend(value, taken) {
        Ok(v) => *out = v,
        // Unreachable: `Canonical` is sealed and implemented only for shapes that always
        // carry their lengths, which is the only thing postcard's serializer can reject
        // (writing into a Vec cannot fail otherwise). No caller-supplied type gets here.
        Err(e) => unreachable_encode(e),
    }
}

#[cold]
#[allow(clippy::panic)]
fn unreachable_encode(e: postcard::Error) -> ! {
    panic!("canonical encoding failed for a value of this crate: {e}")
}

/// Decodes a whole value of type `T` from `bytes`, rejecting trailing bytes and any
/// encoding other than the canonical one.
pub fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_with_limit(bytes, MAX_ENCODED_LEN)
}

/// Like [`decode`] with a caller-chosen size limit.
pub fn decode_with_limit<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { len: bytes.len(), limit });
    }
    // The type's name is looked up only on failure: finding it scans a string, which would
    // cost as much as decoding a small message.
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => {
            ensure_canonical(&value, bytes)?;
            Ok(value)
        }
        Ok((_, rest)) => {
            Err(DecodeError::TrailingBytes { what: short_type_name::<T>(), extra: rest.len() })
        }
        Err(e) => {
            Err(DecodeError::Malformed { what: short_type_name::<T>(), reason: e.to_string() })
        }
    }
}

/// Checks that `bytes` is exactly the canonical encoding of `value`. Postcard accepts
/// non-minimal varints, and every other deviation is already rejected by the decoders of
/// this crate; comparing with a re-encoding catches all of them at once.
///
/// The re-encoding is compared byte by byte as it is produced, without allocating, and stops
/// at the first difference.
pub(crate) fn ensure_canonical<T: Serialize>(value: &T, bytes: &[u8]) -> Result<(), DecodeError> {
    match postcard::serialize_with_flavor(value, Compare { expected: bytes, pos: 0 }) {
        Ok(true) => Ok(()),
        // A difference, or a value that does not serialize: either way not canonical.
        Ok(false) | Err(_) => Err(DecodeError::NonCanonical { what: short_type_name::<T>() }),
    }
}

/// A postcard output that compares what is written with `expected` instead of storing it.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl postcard::ser_flavors::Flavor for Compare<'_> {
    /// True if the output was exactly `expected`.
    type Output = bool;

    // Postcard writes every varint and tag byte by byte: one comparison each, not a slice
    // comparison through memcmp (which was half of this check's samples in a profile of
    // bench-federation's create-branch).
    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.expected.get(self.pos) == Some(&data) {
            self.pos += 1;
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos + data.len();
        if self.expected.get(self.pos..end) == Some(data) {
            self.pos = end;
            Ok(())
        } else {
            // Any error stops serialization early; the caller maps it to "not canonical".
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn finalize(self) -> postcard::Result<bool> {
        Ok(self.pos == self.expected.len())
    }
}

/// Decodes a prefix of `bytes` as `T`, returning the value and the rest.
pub(crate) fn decode_prefix<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), DecodeError> {
    postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| DecodeError::Malformed { what: short_type_name::<T>(), reason: e.to_string() })
}

fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

/// BLAKE3 of the length-prefixed `domain` followed by `bytes`. `domain` separates the id
/// spaces of different kinds of values.
pub(crate) fn hash_bytes(domain: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(domain.len() as u64).to_le_bytes());
    hasher.update(domain);
    hasher.update(bytes);
    *hasher.finalize().as_bytes()
}

/// [`hash_bytes`] of the canonical encoding of `value`.
pub(crate) fn hash_of<T: Canonical + ?Sized>(domain: &[u8], value: &T) -> [u8; 32] {
    // Small values (a triple, typically) are encoded on the stack.
    let mut stack = [0u8; 384];
    match postcard::to_slice(value, &mut stack) {
        Ok(bytes) => hash_bytes(domain, bytes),
        Err(_) => hash_bytes(domain, &encode(value)),
    }
}

/// Writes bytes as lower-case hex.
pub(crate) fn fmt_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Bytes as lower-case hex.
///
/// ```
/// assert_eq!(llmkg_federation_core::encoding::hex(&[0, 171]), "00ab");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Parses 64 hex digits.
pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Defines a 32-byte content id newtype.
/// The lexicographic order of two 32-byte ids, compared as four big-endian words: ids are
/// hashes, so the first word almost always decides, where the byte-array order called
/// `memcmp` (a quarter of inserting a batch into the Merkle tree, which sorts and searches
/// by id).
pub(crate) fn cmp_id_bytes(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    let words = |x: &[u8; 32]| -> [u64; 4] {
        let mut w = [0u64; 4];
        for (word, chunk) in w.iter_mut().zip(x.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *word = u64::from_be_bytes(bytes);
        }
        w
    };
    words(a).cmp(&words(b))
}

macro_rules! content_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub struct $name([u8; 32]);

        $crate::encoding::canonical!($name);

        impl Ord for $name {
            /// The order of the bytes (lexicographic), compared eight at a time.
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                $crate::encoding::cmp_id_bytes(&self.0, &other.0)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl $name {
            /// The id from its raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The first 8 hex digits, for logs and summaries.
            pub fn short(&self) -> String {
                self.to_string().chars().take(8).collect()
            }
        }

        impl std::fmt::Display for $name {
            /// Lower-case hex; a precision keeps that many leading digits (`{id:.8}`).
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&$crate::encoding::hex(&self.0))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::encoding::ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::encoding::parse_hex32(s).map(Self).ok_or($crate::encoding::ParseIdError)
            }
        }
    };
}
pub(crate) use content_id;

/// A content id was not 64 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("expected 64 hexadecimal digits")]
pub struct ParseIdError;

content_id!(
    /// The content id of a [`Triple`](crate::Triple): BLAKE3 of its canonical encoding under the
    /// domain `llmkg/triple/v1`.
    TripleId
);

impl TripleId {
    const DOMAIN: &'static [u8] = b"llmkg/triple/v1";

    /// The id of `triple`.
    pub fn of(triple: &crate::Triple) -> Self {
        Self(hash_of(Self::DOMAIN, triple))
    }

    /// The id of the triple of these terms, which must form a valid triple (a triple
    /// encodes as its three terms in order, like this tuple).
    pub(crate) fn of_parts(s: &crate::Term, p: &crate::Term, o: &crate::Term) -> Self {
        Self(hash_of(Self::DOMAIN, &(s, p, o)))
    }
}

/// Serde for byte strings: `#[serde(with = "llmkg_federation_core::encoding::bytes")]` on a
/// `Vec<u8>` field (and [`bytes::list`] on a `Vec<Vec<u8>>`).
///
/// Serde's derive writes a `Vec<u8>` as a sequence, one call per byte on each side. Postcard
/// writes a byte string exactly as it writes a sequence of `u8` (a varint length, then the
/// bytes), so marking a field changes no encoding, hash or signature: only the speed, one copy
/// instead of a call per byte (commit envelopes in sync batches are megabytes).
///
/// Decoding accepts a byte string or a sequence of bytes (what self-describing formats such
/// as JSON write for either), and keeps postcard's bound: a byte string is copied from the
/// input, so it is never longer than the input.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Envelope {
///     #[serde(with = "llmkg_federation_core::encoding::bytes")]
///     data: Vec<u8>,
/// }
///
/// #[derive(Serialize)]
/// struct Plain {
///     data: Vec<u8>,
/// }
///
/// let e = Envelope { data: b"payload".to_vec() };
/// let fast = postcard::to_allocvec(&e)?;
/// assert_eq!(fast, postcard::to_allocvec(&Plain { data: b"payload".to_vec() })?);
/// assert_eq!(postcard::from_bytes::<Envelope>(&fast)?, e);
/// # Ok::<(), postcard::Error>(())
/// ```
pub mod bytes {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    /// Writes `value` as a byte string.
    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    /// Reads a byte string (or a sequence of bytes).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Serde's own cautious bound on what a length prefix may pre-allocate.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    /// A borrowed byte string that serializes as one.
    struct AsBytes<'a>(&'a [u8]);

    impl serde::Serialize for AsBytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    /// An owned byte string that deserializes from one.
    struct ByteBuf(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserialize(deserializer).map(ByteBuf)
        }
    }

    /// [`bytes`](self) for a `Vec<Vec<u8>>`: a sequence of byte strings.
    pub mod list {
        use super::*;

        /// Writes `value` as a sequence of byte strings.
        pub fn serialize<S: Serializer>(
            value: &[Vec<u8>],
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(value.iter().map(|v| AsBytes(v)))
        }

        /// Reads a sequence of byte strings.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<Vec<u8>>, D::Error> {
            deserializer.deserialize_seq(ListVisitor)
        }

        struct ListVisitor;

        impl<'de> Visitor<'de> for ListVisitor {
            type Value = Vec<Vec<u8>>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of byte strings")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Vec<u8>>, A::Error> {
                // Each element takes at least its length byte: at most 4,096 pre-allocated.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(ByteBuf(b)) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use proptest::prelude::*;
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
        struct Marked {
            #[serde(with = "super")]
            one: Vec<u8>,
            #[serde(with = "super::list")]
            many: Vec<Vec<u8>>,
        }

        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Plain {
            one: Vec<u8>,
            many: Vec<Vec<u8>>,
        }

        proptest! {
            /// Marking the fields changes no byte of the encoding, and each side reads what
            /// the other wrote.
            #[test]
            fn marked_fields_encode_like_sequences(
                one in proptest::collection::vec(any::<u8>(), 0..300),
                many in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            ) {
                let marked = Marked { one: one.clone(), many: many.clone() };
                let plain = Plain { one, many };
                let a = postcard::to_allocvec(&marked).unwrap();
                let b = postcard::to_allocvec(&plain).unwrap();
                prop_assert_eq!(&a, &b);
                prop_assert_eq!(postcard::from_bytes::<Marked>(&b).unwrap(), marked.clone());
                prop_assert_eq!(postcard::from_bytes::<Plain>(&a).unwrap(), plain);
                // Every proper prefix is refused, never read past.
                for cut in 0..a.len() {
                    prop_assert!(postcard::from_bytes::<Marked>(&a[..cut]).is_err());
                }
            }
        }

        #[test]
        fn a_length_beyond_the_input_is_refused_without_allocating_it() {
            // A one-element list claiming a 2^62-byte string, then three bytes.
            let mut bytes = vec![1u8];
            bytes.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
            bytes.extend([1, 2, 3]);
            #[derive(Deserialize, Debug)]
            struct List(#[serde(with = "super::list")] Vec<Vec<u8>>);
            assert!(postcard::from_bytes::<List>(&bytes).is_err());
            // The same list with its true length reads.
            let good = postcard::from_bytes::<List>(&[1, 3, 1, 2, 3]).unwrap();
            assert_eq!(good.0, vec![vec![1, 2, 3]]);
        }
    }
}

#[cfg(test)]
mod id_order_tests {
    use proptest::prelude::*;

    proptest! {
        /// Ids compare as their bytes do, including ids that share a long prefix.
        #[test]
        fn ids_compare_as_their_bytes(
            a in proptest::array::uniform32(any::<u8>()),
            b in proptest::array::uniform32(any::<u8>()),
            shared in 0usize..=32,
        ) {
            let mut b = b;
            b[..shared].copy_from_slice(&a[..shared]);
            prop_assert_eq!(super::cmp_id_bytes(&a, &b), a.cmp(&b));
            let (x, y) = (crate::TripleId::from_bytes(a), crate::TripleId::from_bytes(b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            prop_assert_eq!(x.partial_cmp(&y), Some(a.cmp(&b)));
        }
    }
}
