//! The request parser: RESP arrays of bulk strings, and inline commands.
//!
//! Why ranges and not owned frames: a command's arguments are byte ranges
//! into the connection's read buffer, so parsing allocates nothing per
//! argument (the connection reuses one `Vec` of ranges) and a pipelined
//! buffer is parsed in one pass before anything is executed.
//!
//! Limits are checked on the claimed lengths, before anything is buffered
//! for them: a bulk longer than the body limit, or an array with more
//! elements than the body limit (or [`MAX_ARGS`]), is a protocol error (and the connection is
//! closed, as Redis does).

use std::ops::Range;

/// The most arguments one command may claim.
pub const MAX_ARGS: usize = 1024 * 1024;

/// The longest inline command line (Redis' own limit).
pub const MAX_INLINE: usize = 64 * 1024;

/// A request the client sent wrong: answered `-ERR Protocol error: …`, then
/// the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*` followed by something that is not a length in range.
    #[error("invalid multibulk length")]
    MultibulkLength,
    /// `$` followed by something that is not a length in range.
    #[error("invalid bulk length")]
    BulkLength,
    /// An array element that is not a bulk string.
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    /// A bulk string not followed by CRLF.
    #[error("expected CRLF after a bulk string")]
    MissingCrlf,
    /// An inline line longer than [`MAX_INLINE`].
    #[error("too big inline request")]
    InlineTooBig,
    /// An inline line with an unterminated quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A command whose bytes, all told, exceed the body limit (plus room for
    /// the command name and key).
    #[error("request larger than body_limit")]
    TooBig,
}

/// The outcome of parsing at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command of `len` bytes; its arguments were appended to the
    /// ranges given to [`parse`]. Zero arguments is an empty inline line.
    Command {
        /// Bytes the command took.
        len: usize,
    },
    /// More bytes are needed.
    Incomplete,
}

/// Parses one command at `buf[at..]`, appending its arguments' ranges
/// (absolute offsets into `buf`) to `args`. `limit` is the longest bulk
/// accepted. On [`Parsed::Incomplete`] `args` is left as it was.
pub fn parse(
    buf: &[u8],
    at: usize,
    limit: usize,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let mark = args.len();
    let result = if buf.get(at) == Some(&b'*') {
        parse_multibulk(buf, at, limit, args)
    } else {
        parse_inline(buf, at, args)
    };
    if !matches!(result, Ok(Parsed::Command { .. })) {
        args.truncate(mark);
    }
    result
}

/// The position of the `\r\n` ending the line that starts at `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    Some(from + nl)
}

/// A decimal length between `-1` and `max` (Redis accepts a `-` sign only
/// for the null form, which a request may not use except as "empty").
fn number(digits: &[u8], max: usize) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if n > max as u64 {
        return None;
    }
    let n = i64::try_from(n).ok()?;
    Some(if neg { -n } else { n })
}

/// The digits of a header line `buf[from..nl]` without its `\r`.
fn header(buf: &[u8], from: usize, nl: usize) -> &[u8] {
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    &buf[from..end]
}

fn parse_multibulk(
    buf: &[u8],
    at: usize,
    limit: usize,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = line_end(buf, at) else {
        if buf.len() - at > 32 {
            return Err(ProtocolError::MultibulkLength);
        }
        return Ok(Parsed::Incomplete);
    };
    let count = number(header(buf, at + 1, nl), MAX_ARGS.min(limit))
        .ok_or(ProtocolError::MultibulkLength)?;
    let mut pos = nl + 1;
    if count <= 0 {
        return Ok(Parsed::Command { len: pos - at });
    }
    for _ in 0..count {
        let Some(&first) = buf.get(pos) else {
            return Ok(Parsed::Incomplete);
        };
        if first != b'$' {
            return Err(ProtocolError::ExpectedBulk(char::from(first)));
        }
        let Some(nl) = line_end(buf, pos) else {
            if buf.len() - pos > 32 {
                return Err(ProtocolError::BulkLength);
            }
            return Ok(Parsed::Incomplete);
        };
        let len = number(header(buf, pos + 1, nl), limit)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(ProtocolError::BulkLength)?;
        let start = nl + 1;
        let end = start + len;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Parsed::Command { len: pos - at })
}

/// An inline command: words separated by spaces, `"…"` and `'…'` quoting
/// whole words. Escapes inside quotes are not interpreted (a quoted word is
/// taken as written), which covers what telnet users type.
fn parse_inline(
    buf: &[u8],
    at: usize,
    args: &mut Vec<Range<usize>>,
) -> Result<Parsed, ProtocolError> {
    let Some(nl) = line_end(buf, at) else {
        if buf.len() - at > MAX_INLINE {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Parsed::Incomplete);
    };
    if nl - at > MAX_INLINE {
        return Err(ProtocolError::InlineTooBig);
    }
    let end = if nl > at && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = at;
    while i < end {
        match buf[i] {
            b' ' | b'\t' => i += 1,
            q @ (b'"' | b'\'') => {
                let close = buf[i + 1..end]
                    .iter()
                    .position(|&b| b == q)
                    .ok_or(ProtocolError::UnbalancedQuotes)?;
                args.push(i + 1..i + 1 + close);
                i += close + 2;
            }
            _ => {
                let start = i;
                while i < end && !matches!(buf[i], b' ' | b'\t') {
                    i += 1;
                }
                args.push(start..i);
            }
        }
    }
    Ok(Parsed::Command { len: nl + 1 - at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(input: &[u8]) -> Result<(Vec<Vec<u8>>, Parsed), ProtocolError> {
        let mut args = Vec::new();
        let parsed = parse(input, 0, 1 << 20, &mut args)?;
        Ok((
            args.into_iter().map(|r| input[r].to_vec()).collect(),
            parsed,
        ))
    }

    #[test]
    fn a_multibulk_command_is_its_bulks() {
        let (args, parsed) = words(b"*2\r\n$3\r\nGET\r\n$7\r\nusers:1\r\n").expect("parses");
        assert_eq!(args, vec![b"GET".to_vec(), b"users:1".to_vec()]);
        assert_eq!(parsed, Parsed::Command { len: 26 });
    }

    #[test]
    fn a_partial_command_is_incomplete_and_leaves_no_arguments() {
        let full = b"*2\r\n$3\r\nGET\r\n$7\r\nusers:1\r\n";
        for cut in 0..full.len() {
            let mut args = Vec::new();
            assert_eq!(
                parse(&full[..cut], 0, 1 << 20, &mut args),
                Ok(Parsed::Incomplete),
                "cut at {cut}"
            );
            assert!(args.is_empty());
        }
    }

    #[test]
    fn inline_commands_split_on_spaces_and_quotes() {
        let (args, _) = words(b"SET  users:1 '{\"a\": 1}'\r\n").expect("parses");
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"users:1".to_vec(), b"{\"a\": 1}".to_vec()]
        );
        let (args, parsed) = words(b"\r\n").expect("parses");
        assert!(args.is_empty());
        assert_eq!(parsed, Parsed::Command { len: 2 });
        assert_eq!(words(b"GET \"a\r\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn claimed_lengths_over_the_limit_are_refused_before_the_bytes_arrive() {
        let mut args = Vec::new();
        assert_eq!(
            parse(b"*1\r\n$1048577\r\n", 0, 1 << 20, &mut args),
            Err(ProtocolError::BulkLength)
        );
        assert_eq!(
            parse(b"*99999999999\r\n", 0, 1 << 20, &mut args),
            Err(ProtocolError::MultibulkLength)
        );
        assert_eq!(
            parse(b"*1\r\n+x\r\n", 0, 1 << 20, &mut args),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        assert_eq!(
            parse(b"*x\r\n", 0, 1 << 20, &mut args),
            Err(ProtocolError::MultibulkLength)
        );
    }
}
