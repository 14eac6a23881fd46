//! Replies, written straight into the connection's output buffer.
//!
//! Why functions over a `BytesMut` and no reply enum: a reply is encoded
//! where it is decided, with no intermediate value to allocate, and a row's
//! JSON bytes are copied once, from the cache's `Bytes` into the buffer.
//! RESP2 and RESP3 differ only in nil, maps, doubles and booleans; the
//! protocol version is passed where it matters.

use bytes::{BufMut, BytesMut};

/// The protocol a connection speaks (`HELLO 3` switches to RESP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// RESP2, the default.
    Resp2,
    /// RESP3.
    Resp3,
}

/// Decimal digits of `n` into `out` (no allocation).
fn put_int(out: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

fn header(out: &mut BytesMut, kind: u8, n: i64) {
    out.put_u8(kind);
    put_int(out, n);
    out.put_slice(b"\r\n");
}

/// `+OK`.
pub fn ok(out: &mut BytesMut) {
    out.put_slice(b"+OK\r\n");
}

/// A simple string (`+…`); `s` must not contain CR or LF.
pub fn simple(out: &mut BytesMut, s: &str) {
    out.put_u8(b'+');
    out.put_slice(s.as_bytes());
    out.put_slice(b"\r\n");
}

/// An error (`-…`): `msg` starts with its code (`ERR`, `WRONGTYPE`, …).
/// Line breaks in it are replaced by spaces.
pub fn error(out: &mut BytesMut, msg: &str) {
    out.put_u8(b'-');
    for &b in msg.as_bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// An integer (`:…`).
pub fn int(out: &mut BytesMut, n: i64) {
    header(out, b':', n);
}

/// A bulk string (`$…`).
pub fn bulk(out: &mut BytesMut, bytes: &[u8]) {
    header(out, b'$', bytes.len() as i64);
    out.put_slice(bytes);
    out.put_slice(b"\r\n");
}

/// The nil bulk: `$-1` in RESP2, `_` in RESP3.
pub fn nil(out: &mut BytesMut, proto: Proto) {
    match proto {
        Proto::Resp2 => out.put_slice(b"$-1\r\n"),
        Proto::Resp3 => out.put_slice(b"_\r\n"),
    }
}

/// The header of an array of `n` elements.
pub fn array(out: &mut BytesMut, n: usize) {
    header(out, b'*', n as i64);
}

/// The header of a map of `n` pairs (RESP2: an array of `2n` elements).
pub fn map(out: &mut BytesMut, proto: Proto, n: usize) {
    match proto {
        Proto::Resp2 => header(out, b'*', 2 * n as i64),
        Proto::Resp3 => header(out, b'%', n as i64),
    }
}

/// A verbatim text (RESP3 `=…` with format `txt`; RESP2 a bulk), as
/// Redis answers `INFO` and `CLIENT INFO`.
pub fn verbatim(out: &mut BytesMut, proto: Proto, text: &str) {
    match proto {
        Proto::Resp2 => bulk(out, text.as_bytes()),
        Proto::Resp3 => {
            header(out, b'=', text.len() as i64 + 4);
            out.put_slice(b"txt:");
            out.put_slice(text.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_encoded_as_redis_does() {
        let mut out = BytesMut::new();
        int(&mut out, -42);
        int(&mut out, 0);
        bulk(&mut out, b"hi");
        nil(&mut out, Proto::Resp2);
        nil(&mut out, Proto::Resp3);
        map(&mut out, Proto::Resp2, 2);
        map(&mut out, Proto::Resp3, 2);
        error(&mut out, "ERR a\nb");
        assert_eq!(
            &out[..],
            b":-42\r\n:0\r\n$2\r\nhi\r\n$-1\r\n_\r\n*4\r\n%2\r\n-ERR a b\r\n"
        );
    }
}
