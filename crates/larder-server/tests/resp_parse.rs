//! Property tests of the RESP request parser: arbitrary bytes never panic
//! and never claim memory beyond what arrived or beyond the limit; valid
//! commands parse to their words however the bytes are split.

use larder_server::resp::parse::{parse, Parsed, MAX_ARGS, MAX_INLINE};
use proptest::prelude::*;

const LIMIT: usize = 512;

/// Parses every command in `buf`; checks the ranges on the way.
fn parse_all(buf: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let mut args = Vec::new();
        match parse(buf, at, LIMIT, &mut args) {
            Ok(Parsed::Command { len }) => {
                assert!(len > 0 && at + len <= buf.len(), "length within the buffer");
                // No range beyond what arrived, none longer than the limit
                // (inline words are bounded by the inline limit instead).
                for r in &args {
                    assert!(
                        r.start >= at && r.end <= at + len,
                        "{r:?} outside the command"
                    );
                    assert!(r.len() <= LIMIT.max(MAX_INLINE));
                }
                // Each argument takes at least one byte of input.
                assert!(args.len() <= len);
                out.push(args.iter().map(|r| buf[r.clone()].to_vec()).collect());
                at += len;
            }
            Ok(Parsed::Incomplete) => {
                assert!(args.is_empty(), "an incomplete command leaves no arguments");
                return Ok(out);
            }
            Err(e) => return Err(e.to_string()),
        }
        if at == buf.len() {
            return Ok(out);
        }
    }
}

fn encode(words: &[Vec<u8>]) -> Vec<u8> {
    let mut b = format!("*{}\r\n", words.len()).into_bytes();
    for w in words {
        b.extend_from_slice(format!("${}\r\n", w.len()).as_bytes());
        b.extend_from_slice(w);
        b.extend_from_slice(b"\r\n");
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_all(&bytes);
    }

    #[test]
    fn resp_shaped_noise_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()),
                Just(b"-1".to_vec()), Just(b"99999999999999999999".to_vec()),
                "[0-9]{1,4}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
            0..40,
        )
    ) {
        let _ = parse_all(&parts.concat());
    }

    #[test]
    fn commands_parse_to_their_words_however_split(
        commands in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            1..5,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        prop_assert_eq!(parse_all(&bytes), Ok(commands.clone()));
        // A prefix parses to a prefix of the commands, never an error.
        let cut = cut.index(bytes.len());
        let head = parse_all(&bytes[..cut]).expect("a prefix is not an error");
        prop_assert!(head.len() <= commands.len());
        prop_assert_eq!(&head[..], &commands[..head.len()]);
    }

    #[test]
    fn claimed_lengths_over_the_limit_are_refused(n in (LIMIT as u64 + 1)..u64::MAX) {
        let bytes = format!("*1\r\n${n}\r\n").into_bytes();
        let mut args = Vec::new();
        prop_assert!(parse(&bytes, 0, LIMIT, &mut args).is_err());
        prop_assert!(args.is_empty());
        let bytes = format!("*{n}\r\n").into_bytes();
        prop_assert!(parse(&bytes, 0, LIMIT, &mut args).is_err());
        prop_assert!(args.is_empty());
    }

    /// An array claiming more elements than the body limit is refused by
    /// its header alone, also below `MAX_ARGS` (where the limit, not the
    /// parser's own ceiling, decides).
    #[test]
    fn claimed_array_lengths_over_the_body_limit_are_refused(n in (LIMIT as u64 + 1)..=(MAX_ARGS as u64)) {
        let mut args = Vec::new();
        let bytes = format!("*{n}\r\n").into_bytes();
        prop_assert!(parse(&bytes, 0, LIMIT, &mut args).is_err());
        prop_assert!(args.is_empty());
    }
}
