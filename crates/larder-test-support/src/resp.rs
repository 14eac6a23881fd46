//! Just enough blocking RESP2 to talk to a Redis without the `redis` crate or
//! an async runtime: [`RedisServer`](crate::RedisServer) uses it to wait for
//! `PING`, and tests use it to poke their own servers (`SET`, `GET`,
//! `CONFIG GET`, `DEBUG SLEEP`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo` (`None` for the null bulk string `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None` for the null array `*-1`)
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The payload of a bulk string, if this is a non-null one.
    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
}

/// A blocking connection that sends commands and reads replies one by one.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects with a 5 s connect timeout and 10 s read/write timeouts, so a
    /// test never hangs forever on a server that went away.
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one command (`["SET", "k", "v"]`) and reads its reply. A Redis
    /// error comes back as `Ok(Reply::Error(..))`; `Err` means I/O or a
    /// reply that is not RESP.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.writer.write_all(&encode(args))?;
        read_reply(&mut self.reader)
    }
}

/// Connects, sends one command, returns its reply.
pub fn cmd<A: AsRef<[u8]>>(addr: SocketAddr, args: &[A]) -> io::Result<Reply> {
    Conn::connect(addr)?.cmd(args)
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one complete reply.
pub fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Int(parse_int(rest)?)),
        "$" => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0; len as usize + 2];
            r.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad("bulk string not terminated by CRLF"));
            }
            buf.truncate(len as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let len = parse_int(rest)?;
            if len < 0 {
                return Ok(Reply::Array(None));
            }
            let items = (0..len)
                .map(|_| read_reply(r))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(bad(&format!("unexpected reply line {line:?}"))),
    }
}

/// Reads a CRLF-terminated line (without the CRLF); EOF is an error.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    match line.strip_suffix("\r\n") {
        Some(l) if !l.is_empty() => Ok(l.to_string()),
        _ => Err(bad(&format!("malformed reply line {line:?}"))),
    }
}

fn parse_int(s: &str) -> io::Result<i64> {
    s.parse()
        .map_err(|_| bad(&format!("not an integer in reply: {s:?}")))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
