//! The envelope: the small, versioned binary header around every cached value.
//!
//! ```text
//! offset  size  field
//!      0     1  magic  b'L'
//!      1     1  format version (1)
//!      2     1  flags  (bit 0: negative — "not found" is remembered;
//!                       bit 7: stamped — a generation stamp follows)
//!      3     1  reserved, 0
//!      4     8  fresh_until, ms since the Unix epoch, big-endian
//!     12     8  stale_until, ms since the Unix epoch, big-endian
//!     20     4  load duration in µs (XFetch's δ), big-endian
//!     24     …  stamped only: stamp length (2 bytes, big-endian), stamp
//!      …     …  payload, encoded by the cache's codec
//! ```
//!
//! The stamp (see `generation.rs`) is opaque here: the generation the entry
//! was filled under and its tags, which purge and tag invalidation compare
//! against. Unstamped entries are byte-for-byte what they were before
//! stamps existed.
//!
//! Decoding never panics: short input, a wrong magic byte or an unknown
//! version is an [`EnvelopeError`].

use bytes::{Buf, BufMut, Bytes};

const MAGIC: u8 = b'L';
const VERSION: u8 = 1;
/// Size of the fixed header.
pub(crate) const HEADER_LEN: usize = 24;
const FLAG_NEGATIVE: u8 = 0b0000_0001;
const FLAG_STAMPED: u8 = 0b1000_0000;
const KNOWN_FLAGS: u8 = FLAG_NEGATIVE | FLAG_STAMPED;

/// Why bytes are not a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum EnvelopeError {
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
pub(crate) struct Envelope {
    /// Until when (ms since the epoch) the entry is fresh.
    pub(crate) fresh_until: u64,
    /// Until when (ms since the epoch) the entry may be served stale.
    pub(crate) stale_until: u64,
    /// How long the load that produced it took, in µs.
    pub(crate) load_us: u32,
    /// `None`: the source said "not found" (a negative entry).
    pub(crate) payload: Option<Bytes>,
    /// The generation stamp (opaque here), if the entry has one.
    pub(crate) stamp: Option<Bytes>,
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
    pub(crate) fn encode(&self) -> Vec<u8> {
        let payload = self.payload.as_deref().unwrap_or_default();
        // A stamp longer than a u16 cannot be written; larder's stamps are
        // bounded far below that (see generation.rs), so it is dropped.
        let stamp = self
            .stamp
            .as_deref()
            .filter(|s| s.len() <= usize::from(u16::MAX));
        let stamp_len = stamp.map_or(0, |s| 2 + s.len());
        let mut out = Vec::with_capacity(HEADER_LEN + stamp_len + payload.len());
        out.put_u8(MAGIC);
        out.put_u8(VERSION);
        let mut flags = if self.payload.is_none() {
            FLAG_NEGATIVE
        } else {
            0
        };
        if stamp.is_some() {
            flags |= FLAG_STAMPED;
        }
        out.put_u8(flags);
        out.put_u8(0);
        out.put_u64(self.fresh_until);
        out.put_u64(self.stale_until);
        out.put_u32(self.load_us);
        if let Some(stamp) = stamp {
            // Bounded just above.
            out.put_u16(stamp.len() as u16);
            out.extend_from_slice(stamp);
        }
        out.extend_from_slice(payload);
        out
    }

    /// Decodes bytes produced by [`Envelope::encode`].
    pub(crate) fn decode(bytes: Bytes) -> Result<Self, EnvelopeError> {
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
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let negative = flags & FLAG_NEGATIVE != 0;
        let mut body = HEADER_LEN;
        let stamp = if flags & FLAG_STAMPED != 0 {
            let len_end = HEADER_LEN + 2;
            if bytes.len() < len_end {
                return Err(EnvelopeError::Truncated(bytes.len()));
            }
            let len = usize::from(u16::from_be_bytes([
                bytes[HEADER_LEN],
                bytes[HEADER_LEN + 1],
            ]));
            body = len_end + len;
            if bytes.len() < body {
                return Err(EnvelopeError::Truncated(bytes.len()));
            }
            Some(bytes.slice(len_end..body))
        } else {
            None
        };
        if negative && bytes.len() > body {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut load = [0u8; 4];
        load.copy_from_slice(&bytes[20..24]);
        let (fresh_until, stale_until) = (u64_at(4), u64_at(12));
        // The payload is the rest: advanced to rather than sliced, so the
        // bytes are not shared (sharing a `Bytes` made from a `Vec`
        // allocates) unless a stamp already shares them.
        let payload = (!negative).then(|| {
            let mut payload = bytes;
            payload.advance(body);
            payload
        });
        Ok(Envelope {
            fresh_until,
            stale_until,
            load_us: u32::from_be_bytes(load),
            payload,
            stamp,
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
                       payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
                       stamp in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64))) {
            let env = Envelope { fresh_until: fresh, stale_until: stale, load_us: load,
                                 payload: payload.map(Bytes::from), stamp: stamp.map(Bytes::from) };
            let decoded = Envelope::decode(Bytes::from(env.encode())).expect("round trip");
            prop_assert_eq!(decoded, env);
        }

        /// Valid envelopes truncated or with one byte changed: an error or
        /// an envelope, never a panic.
        #[test]
        fn damaged_envelopes_never_panic(fresh in any::<u64>(), stale in any::<u64>(), load in any::<u32>(),
                       payload in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                       stamp in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                       cut in any::<proptest::sample::Index>(), at in any::<proptest::sample::Index>(),
                       byte in any::<u8>()) {
            let env = Envelope { fresh_until: fresh, stale_until: stale, load_us: load,
                                 payload: payload.map(Bytes::from), stamp: stamp.map(Bytes::from) };
            let bytes = env.encode().to_vec();
            let mut changed = bytes.clone();
            let i = at.index(changed.len());
            changed[i] = byte;
            let _ = Envelope::decode(Bytes::from(changed));
            let _ = Envelope::decode(Bytes::from(bytes[..cut.index(bytes.len() + 1)].to_vec()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
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
            stamp: None,
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
    fn an_unstamped_entry_is_unchanged_and_a_short_stamp_is_refused() {
        let plain = Envelope {
            fresh_until: 1,
            stale_until: 2,
            load_us: 3,
            payload: Some(Bytes::from_static(b"{}")),
            stamp: None,
        };
        assert_eq!(plain.encode().len(), HEADER_LEN + 2);
        let stamped = Envelope {
            stamp: Some(Bytes::from_static(b"stamp")),
            ..plain
        }
        .encode();
        assert_eq!(stamped.len(), HEADER_LEN + 2 + 5 + 2);
        let cut = Bytes::from(stamped[..HEADER_LEN + 4].to_vec());
        assert_eq!(
            Envelope::decode(cut),
            Err(EnvelopeError::Truncated(HEADER_LEN + 4))
        );
    }

    #[test]
    fn freshness_follows_the_times() {
        let env = Envelope {
            fresh_until: 100,
            stale_until: 200,
            load_us: 0,
            payload: None,
            stamp: None,
        };
        let at = |now| Freshness::at(now, env.fresh_until, env.stale_until);
        assert_eq!(at(99), Freshness::Fresh);
        assert_eq!(at(100), Freshness::Stale);
        assert_eq!(at(200), Freshness::Expired);
    }
}
