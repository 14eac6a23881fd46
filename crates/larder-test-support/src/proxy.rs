//! A TCP proxy on a loopback port that a test can cut and restore, to
//! simulate a database (or Redis) outage without touching the shared server:
//! a closed sqlx pool cannot reopen, but a pool whose connections go through
//! the proxy sees them drop and can reconnect once the link is restored.

use std::collections::HashMap;
use std::io;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the proxy waits to reach its target for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP forwarder `127.0.0.1:<free port>` → `target`.
///
/// Behavior:
/// - every accepted connection gets its own connection to the target and
///   two OS threads copying bytes (no async runtime involved, so it works
///   whatever runtime the test uses); half-closes are passed on;
/// - if the target refuses, the client's connection is closed;
/// - [`cut`](Self::cut) closes every live connection (both sides see EOF)
///   and from then on accepts and immediately closes new ones, until
///   [`restore`](Self::restore);
/// - [`hold_after`](Self::hold_after) arms a trigger: once a client sends
///   bytes containing the pattern (e.g. `COMMIT`), they are forwarded but
///   everything the target answers from then on, on every connection, is
///   held back until [`release`](Self::release) (or a cut, which drops it):
///   the target did the work, the client does not hear about it;
/// - dropping it stops accepting (new connections are refused) and closes
///   every live connection.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    state: Mutex<State>,
    /// Signalled when held answers may flow again.
    unheld: Condvar,
}

#[derive(Debug, Default)]
struct State {
    cut: bool,
    /// The pattern that starts holding answers back, once seen.
    hold_trigger: Option<Vec<u8>>,
    /// Answers from the target are held back.
    held: bool,
    /// How often the trigger fired.
    holds: u64,
    next_id: u64,
    /// Clones of both sockets of every live connection, to shut them down.
    conns: HashMap<u64, [TcpStream; 2]>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking pump thread must not take the proxy down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TcpProxy {
    /// Starts forwarding a fresh loopback port to `target`.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0 for TcpProxy");
        let addr = listener.local_addr().expect("TcpProxy local addr");
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            unheld: Condvar::new(),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("tcp-proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn TcpProxy thread")
        };
        TcpProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every live connection and closes new ones as soon as they are
    /// accepted, until [`restore`](Self::restore).
    pub fn cut(&self) {
        let conns = {
            let mut state = self.shared.state();
            state.cut = true;
            state.held = false;
            state.hold_trigger = None;
            std::mem::take(&mut state.conns)
        };
        self.shared.unheld.notify_all();
        for [client, upstream] in conns.into_values() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    /// Arms the hold: the first chunk a client sends that contains
    /// `pattern` is forwarded, then the target's answers are held back
    /// (on every connection) until [`release`](Self::release).
    pub fn hold_after(&self, pattern: &[u8]) {
        self.shared.state().hold_trigger = Some(pattern.to_vec());
    }

    /// How often an armed hold fired so far.
    pub fn holds(&self) -> u64 {
        self.shared.state().holds
    }

    /// Lets the held answers (and all later ones) through, and disarms
    /// the trigger if it did not fire.
    pub fn release(&self) {
        {
            let mut state = self.shared.state();
            state.held = false;
            state.hold_trigger = None;
        }
        self.shared.unheld.notify_all();
    }

    /// Forwards new connections again (connections cut before stay closed).
    pub fn restore(&self) {
        self.shared.state().cut = false;
    }

    /// How many connections are being forwarded right now.
    pub fn live_connections(&self) -> usize {
        self.shared.state().conns.len()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the blocking accept() so the thread sees `stop` and drops the
        // listener. If even that connect fails, leave the thread be rather
        // than hang the test in join().
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok() {
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match client {
            Ok(client) => client,
            // e.g. EMFILE: back off instead of spinning.
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.state().cut {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let shared = Arc::clone(shared);
        // Connecting to the target happens off the accept thread so a slow
        // target does not hold up other clients (or cut/Drop).
        let _ = thread::Builder::new()
            .name("tcp-proxy-conn".into())
            // An error here (e.g. the target refusing) has already closed
            // the client's socket: that is all a client of a proxy sees.
            .spawn(move || {
                let _ = forward(client, &shared);
            });
    }
}

/// Connects `client` to the target and pumps both ways until both close.
fn forward(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let upstream = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let id = {
        let mut state = shared.state();
        // A cut (or Drop) that happened while we connected wins.
        if state.cut || shared.stop.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
            return Ok(());
        }
        let id = state.next_id;
        state.next_id += 1;
        state
            .conns
            .insert(id, [client.try_clone()?, upstream.try_clone()?]);
        id
    };

    let up = {
        let (from, to) = (client.try_clone()?, upstream.try_clone()?);
        let shared = Arc::clone(shared);
        thread::Builder::new()
            .name("tcp-proxy-up".into())
            .spawn(move || pump(from, to, Direction::Up, &shared))?
    };
    pump(upstream, client, Direction::Down, shared);
    let _ = up.join();
    shared.state().conns.remove(&id);
    Ok(())
}

/// Which way a pump copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client → target: watched for the hold trigger.
    Up,
    /// Target → client: held back while a hold is on.
    Down,
}

/// Copies `from` → `to` until EOF or error, then passes the half-close on.
fn pump(mut from: TcpStream, mut to: TcpStream, direction: Direction, shared: &Shared) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        {
            let mut state = shared.state();
            match direction {
                Direction::Up => {
                    let fire = state
                        .hold_trigger
                        .as_ref()
                        .is_some_and(|p| chunk.windows(p.len()).any(|w| w == p.as_slice()));
                    if fire {
                        state.hold_trigger = None;
                        state.held = true;
                        state.holds += 1;
                    }
                }
                Direction::Down => {
                    let _state = shared
                        .unheld
                        .wait_while(state, |s| s.held)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    // If `from` failed (reset, or shut down by cut), make sure the other
    // direction's reader wakes up too.
    let _ = from.shutdown(Shutdown::Read);
}
