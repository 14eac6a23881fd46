//! The envelope: the small, versioned binary header around every cached value.
//!
//! ```text
//! offset  size  field
//!      0     1  magic  b'L'
//!      1     1  format version (1)
//!      2     1  flags  (bit 0: negative — "not found" is remembered)
//!      3     1  reserved, 0
//!      4     8  fresh_until, ms since the Unix epoch, big-endian
//!     12     8  stale_until, ms since the Unix epoch, big-endian
//!     20     4  load duration in µs (XFetch's δ), big-endian
//!     24     …  payload, encoded by the cache's codec
//! ```
//!
//! Decoding never panics: short input, a wrong magic byte or an unknown
//! version is an [`EnvelopeError`].

use bytes::{BufMut, Bytes};

const MAGIC: u8 = b'L';
const VERSION: u8 = 1;
/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 24;
const FLAG_NEGATIVE: u8 = 0b0000_0001;

/// Why bytes are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than the header needs.
    #[error("entry is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    /// The first byte is not larder's magic byte.
    #[error("entry does not start with larder's magic byte (found {0:#04x}); is another program writing these keys?")]
    NotAnEnvelope(u8),
    /// A format version this build does not know.
    #[error("entry has format version {0}, this build reads version {VERSION}; upgrade larder")]
    UnknownVersion(u8),
    /// A negative entry carries a payload, or flags this build does not know.
    #[error("entry has unknown flags {0:#010b}")]
    UnknownFlags(u8),
}

/// A decoded envelope. The payload shares the buffer it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Until when (ms since the epoch) the entry is fresh.
    pub fresh_until: u64,
    /// Until when (ms since the epoch) the entry may be served stale.
    pub stale_until: u64,
    /// How long the load that produced it took, in µs.
    pub load_us: u32,
    /// `None`: the source said "not found" (a negative entry).
    pub payload: Option<Bytes>,
}

/// How an envelope's times compare with now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    Stale,
    Expired,
}

impl Envelope {
    /// Encodes header and payload into one buffer.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.put_u8(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(if self.payload.is_none() {
            FLAG_NEGATIVE
        } else {
            0
        });
        out.put_u8(0);
        out.put_u64(self.fresh_until);
        out.put_u64(self.stale_until);
        out.put_u32(self.load_us);
        out.extend_from_slice(payload);
        out
    }

    /// Decodes bytes produced by [`Envelope::encode`].
    pub fn decode(bytes: Bytes) -> Result<Self, EnvelopeError> {
        if bytes.len() < HEADER_LEN {
            return Err(EnvelopeError::Truncated(bytes.len()));
        }
        if bytes[0] != MAGIC {
            return Err(EnvelopeError::NotAnEnvelope(bytes[0]));
        }
        if bytes[1] != VERSION {
            return Err(EnvelopeError::UnknownVersion(bytes[1]));
        }
        let flags = bytes[2];
        if flags & !FLAG_NEGATIVE != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let negative = flags & FLAG_NEGATIVE != 0;
        if negative && bytes.len() > HEADER_LEN {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut load = [0u8; 4];
        load.copy_from_slice(&bytes[20..24]);
        Ok(Envelope {
            fresh_until: u64_at(4),
            stale_until: u64_at(12),
            load_us: u32::from_be_bytes(load),
            payload: (!negative).then(|| bytes.slice(HEADER_LEN..)),
        })
    }
}

impl Freshness {
    /// Where `now_ms` falls relative to an entry's two times.
    pub(crate) fn at(now_ms: u64, fresh_until: u64, stale_until: u64) -> Self {
        if now_ms < fresh_until {
            Freshness::Fresh
        } else if now_ms < stale_until {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(fresh in any::<u64>(), stale in any::<u64>(), load in any::<u32>(),
                       payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256))) {
            let env = Envelope { fresh_until: fresh, stale_until: stale, load_us: load,
                                 payload: payload.map(Bytes::from) };
            let decoded = Envelope::decode(Bytes::from(env.encode())).expect("round trip");
            prop_assert_eq!(decoded, env);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Envelope::decode(Bytes::from(bytes));
        }
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"L")),
            Err(EnvelopeError::Truncated(1))
        );
        let mut good = Envelope {
            fresh_until: 1,
            stale_until: 2,
            load_us: 3,
            payload: None,
        }
        .encode();
        good[1] = 9;
        assert_eq!(
            Envelope::decode(Bytes::from(good.clone())),
            Err(EnvelopeError::UnknownVersion(9))
        );
        good[0] = b'{';
        assert_eq!(
            Envelope::decode(Bytes::from(good)),
            Err(EnvelopeError::NotAnEnvelope(b'{'))
        );
    }

    #[test]
    fn freshness_follows_the_times() {
        let env = Envelope {
            fresh_until: 100,
            stale_until: 200,
            load_us: 0,
            payload: None,
        };
        let at = |now| Freshness::at(now, env.fresh_until, env.stale_until);
        assert_eq!(at(99), Freshness::Fresh);
        assert_eq!(at(100), Freshness::Stale);
        assert_eq!(at(200), Freshness::Expired);
    }
}
