//! A fault-injecting HTTP proxy for the tests: it sits between an S3 client (a mount, the SDK, a
//! raw socket) and the S3 test server on loopback, forwards each request, and on demand adds
//! latency, stalls, refuses connections, cuts responses with a TCP reset, or answers requests
//! itself with an S3 error. It owns its listening socket, one thread per client connection and
//! the upstream connections those open; it knows nothing of S3 beyond the error body it writes,
//! and nothing of the rest of the test harness (an example may include this file on its own).
//!
//! It is HTTP-aware just enough for faults to apply per request exactly: each client connection
//! carries one request. The proxy reads the request head, forwards it with `Connection: close`
//! on a fresh upstream connection, relays the response (with `Connection: close` too, so the
//! client does not pool the connection) until upstream closes, and then closes the client
//! connection. Clients reconnect for their next request, as they do after any `close`. Responses
//! are never parsed beyond their head, so HEAD responses and any body framing need no care; it
//! relies on the upstream honouring `Connection: close` (Garage's hyper server does).
//!
//! Only std (threads, std::net) and the `libc` the crate already depends on, for `SO_LINGER`
//! (std's `set_linger` is unstable).

#![allow(dead_code)] // Included by files that each use part of it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a blocked read or write wakes to check whether the proxy is being dropped (and a
/// stalled request whether its client went away): prompt enough for Drop, rare enough not to spin.
const TICK: Duration = Duration::from_millis(50);
/// Largest request or response head accepted: S3 heads are a few KiB; this bounds a confused peer.
const MAX_HEAD: usize = 64 << 10;
/// How long a closing connection keeps reading what the client still sends. Closing a socket
/// with unread bytes sends a reset, which can destroy the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
/// Upstream is on loopback: a connect that takes this long will not succeed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `refuse(false)` retries binding the port again while something else briefly holds it.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait in `refuse` for the acceptor to close or reopen the listener. It takes
/// microseconds (plus up to REBIND_TIMEOUT); the bound turns a broken proxy into a failure, not a hang.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Copy buffer size: large enough for throughput, small enough that a cut lands mid-body.
const CHUNK: usize = 64 << 10;

/// The proxy. Dropping it closes the listener and ends every connection thread before returning.
/// Its threads are named `fpx-PORT-acc` and `fpx-PORT-conn` (15 bytes at most, Linux's limit),
/// so a test can check that none outlives it.
pub struct FaultProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Notified on every change of `state`: stall, refuse, latency waits and Drop wait on it.
    changed: Condvar,
    requests: AtomicU64,
    failed: AtomicU64,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    latency: Duration,
    stalled: bool,
    refused: bool,
    /// Whether the listener is open (false while refused, once the acceptor has closed it).
    listening: bool,
    rebind_error: Option<String>,
    resets_left: usize,
    reset_after: u64,
    failures_left: usize,
    failure_status: u16,
    failure_code: String,
    stopping: bool,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let shared = Arc::new(Shared {
            addr: listener.local_addr()?,
            upstream,
            state: Mutex::new(State {
                listening: true,
                ..State::default()
            }),
            changed: Condvar::new(),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("fpx-{}-acc", shared.addr.port()))
                .spawn(move || accept_loop(&shared, listener))?
        };
        Ok(FaultProxy {
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, an endpoint URL for an S3 client.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Delay added before forwarding each request and again before relaying its response.
    pub fn set_latency(&self, each_way: Duration) {
        self.shared.update(|s| s.latency = each_way);
    }

    /// While on, requests are read but neither forwarded nor answered, and open connections
    /// relay no more bytes either way. Off: everything waiting flows again.
    pub fn stall(&self, on: bool) {
        self.shared.update(|s| s.stalled = on);
    }

    /// While on, the listening socket is closed so a connect fails with ECONNREFUSED; off, the
    /// same port is bound again. Returns once the listener is in the state asked for.
    /// Connections already open are not touched.
    pub fn refuse(&self, on: bool) {
        let was_refused = self.shared.update(|s| std::mem::replace(&mut s.refused, on));
        if on && !was_refused {
            // The acceptor blocks in accept(): a connection wakes it to close the listener.
            let _ = TcpStream::connect_timeout(&self.shared.addr, CONNECT_TIMEOUT);
        }
        let state = self.shared.lock();
        let (state, waited) = self
            .shared
            .changed
            .wait_timeout_while(state, SWITCH_TIMEOUT, |s| {
                s.listening == on && s.rebind_error.is_none() && !s.stopping
            })
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(error) = &state.rebind_error {
            panic!("fault proxy: binding {} again: {error}", self.shared.addr);
        }
        assert!(
            !waited.timed_out(),
            "fault proxy: the listener did not {} within {SWITCH_TIMEOUT:?}",
            if on { "close" } else { "open again" }
        );
    }

    /// The next `n_responses` responses are cut after `after_bytes` bytes (head included) with
    /// a TCP reset. A response shorter than that is relayed whole but still counts as one.
    /// Answers of [`FaultProxy::fail_next`] are never cut.
    pub fn reset_after(&self, n_responses: usize, after_bytes: u64) {
        self.shared.update(|s| {
            s.resets_left = n_responses;
            s.reset_after = after_bytes;
        });
    }

    /// The next `n` requests are answered by the proxy itself with `status` and an S3 error
    /// body with `code`, after reading the request body, so the client sees a clean answer.
    pub fn fail_next(&self, n: usize, status: u16, code: &str) {
        self.shared.update(|s| {
            s.failures_left = n;
            s.failure_status = status;
            s.failure_code = code.to_owned();
        });
    }

    /// Requests seen: forwarded or answered by the proxy (a stalled one counts once it flows).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests answered by [`FaultProxy::fail_next`].
    pub fn failed_requests(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.update(|s| s.stopping = true);
        // Wakes the acceptor out of accept(); it then sees `stopping`. (Refused when the listener
        // is closed: then the acceptor waits on the condition variable, which `update` notified.)
        let _ = TcpStream::connect_timeout(&self.shared.addr, CONNECT_TIMEOUT);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Every connection thread checks `stopping` at least every TICK.
        let connections = std::mem::take(&mut *self.shared.connections());
        for connection in connections {
            let _ = connection.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn connections(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.lock());
        self.changed.notify_all();
        result
    }

    fn stopping(&self) -> io::Result<()> {
        if self.lock().stopping {
            Err(io::Error::other("fault proxy stopping"))
        } else {
            Ok(())
        }
    }

    /// Sleeps for the configured latency (cut short by Drop).
    fn delay(&self) -> io::Result<()> {
        let state = self.lock();
        let latency = state.latency;
        let (state, _) = self
            .changed
            .wait_timeout_while(state, latency, |s| !s.stopping)
            .unwrap_or_else(PoisonError::into_inner);
        drop(state);
        self.stopping()
    }

    /// Waits while stalled (cut short by Drop).
    fn unstalled(&self) -> io::Result<()> {
        let state = self.lock();
        let state = self
            .changed
            .wait_while(state, |s| s.stalled && !s.stopping)
            .unwrap_or_else(PoisonError::into_inner);
        drop(state);
        self.stopping()
    }

    /// Waits while stalled, before a request flows; fails when the client goes away meanwhile,
    /// so a request its client gave up on is never forwarded late.
    fn unstalled_for(&self, client: &TcpStream) -> io::Result<()> {
        let mut was_stalled = false;
        loop {
            let state = self.lock();
            if state.stopping {
                return Err(io::Error::other("fault proxy stopping"));
            }
            let stalled = state.stalled;
            if stalled {
                let (state, _) = self
                    .changed
                    .wait_timeout(state, TICK)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(state);
            } else {
                drop(state);
                if !was_stalled {
                    return Ok(());
                }
            }
            was_stalled = true;
            // Still there? A closed client shows as EOF; body bytes or nothing yet mean yes.
            client.set_nonblocking(true)?;
            let peeked = client.peek(&mut [0u8; 1]);
            client.set_nonblocking(false)?;
            match peeked {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            if !stalled {
                return Ok(());
            }
        }
    }

    fn take_failure(&self) -> Option<(u16, String)> {
        let mut state = self.lock();
        if state.failures_left == 0 {
            return None;
        }
        state.failures_left -= 1;
        Some((state.failure_status, state.failure_code.clone()))
    }

    fn take_reset(&self) -> Option<u64> {
        let mut state = self.lock();
        if state.resets_left == 0 {
            return None;
        }
        state.resets_left -= 1;
        Some(state.reset_after)
    }

    /// One read, retried across the TICK timeouts until data, EOF, an error or Drop.
    fn read(&self, from: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match from.read(buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.stopping()?
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                result => return result,
            }
        }
    }

    /// Writes all of `data`, never while stalled.
    fn write_all(&self, to: &mut impl Write, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.unstalled()?;
            match to.write(data) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads into `buf` until it holds a whole head; returns the head's length (through the
    /// blank line), or `None` on EOF before any byte.
    fn read_head(&self, from: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(end + 4));
            }
            if buf.len() > MAX_HEAD {
                return Err(io::Error::new(ErrorKind::InvalidData, "head too large"));
            }
            match self.read(from, &mut chunk)? {
                0 if buf.is_empty() => return Ok(None),
                0 => return Err(ErrorKind::UnexpectedEof.into()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Copies `first`, then from `from` to `to`, `limit` bytes in all (or until EOF, or until
    /// `done` is set, when `None`).
    fn pump(
        &self,
        from: &mut TcpStream,
        to: &mut impl Write,
        first: &[u8],
        limit: Option<u64>,
        done: &AtomicBool,
    ) -> io::Result<()> {
        let mut left = limit.unwrap_or(u64::MAX);
        let first = &first[..first.len().min(usize::try_from(left).unwrap_or(usize::MAX))];
        self.write_all(to, first)?;
        left -= first.len() as u64;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = loop {
                match from.read(&mut buf[..want]) {
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if done.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        self.stopping()?;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    result => break result?,
                }
            };
            if n == 0 {
                return match limit {
                    Some(_) => Err(ErrorKind::UnexpectedEof.into()),
                    None => Ok(()),
                };
            }
            self.write_all(to, &buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut listener = Some(listener);
    loop {
        let Some(open) = &listener else {
            let state = shared.lock();
            let state = shared
                .changed
                .wait_while(state, |s| s.refused && !s.stopping)
                .unwrap_or_else(PoisonError::into_inner);
            if state.stopping {
                return;
            }
            drop(state);
            match rebind(shared.addr) {
                Ok(open) => {
                    listener = Some(open);
                    shared.update(|s| s.listening = true);
                }
                Err(error) => {
                    shared.update(|s| s.rebind_error = Some(error.to_string()));
                    return;
                }
            }
            continue;
        };
        let accepted = open.accept();
        let (stopping, refused) = {
            let state = shared.lock();
            (state.stopping, state.refused)
        };
        if stopping {
            return;
        }
        if refused {
            // Dropping the listener is what makes connects fail with ECONNREFUSED.
            listener = None;
            shared.update(|s| s.listening = false);
            continue;
        }
        match accepted {
            Ok((client, _)) => {
                let worker = shared.clone();
                let spawned = thread::Builder::new()
                    .name(format!("fpx-{}-conn", shared.addr.port()))
                    .spawn(move || serve(&worker, client));
                let mut connections = shared.connections();
                connections.retain(|c| !c.is_finished());
                if let Ok(handle) = spawned {
                    connections.push(handle);
                }
            }
            // Out of descriptors, say: wait a little rather than spin on the error.
            Err(_) => thread::sleep(TICK),
        }
    }
}

fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_TIMEOUT;
    loop {
        // std sets SO_REUSEADDR, so connections of the old listener in TIME_WAIT do not block this.
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => thread::sleep(TICK),
            result => return result,
        }
    }
}

/// One client connection, one request. Any error ends the connection: a client that goes away
/// is normal.
fn serve(shared: &Shared, mut client: TcpStream) {
    let _ = serve_request(shared, &mut client);
}

fn serve_request(shared: &Shared, client: &mut TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(TICK))?;
    client.set_write_timeout(Some(TICK))?;
    client.set_nodelay(true)?;
    let mut buf = Vec::new();
    let Some(head_len) = shared.read_head(client, &mut buf)? else {
        return Ok(());
    };
    let body_start = buf.split_off(head_len);
    let request = Head::parse(&buf).ok_or(ErrorKind::InvalidData)?;
    shared.unstalled_for(client)?;
    let id = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    shared.delay()?;
    if request.expect_continue {
        // The client waits for this before sending the body; the upstream's own 100 is dropped.
        shared.write_all(client, b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let done = AtomicBool::new(false);

    if let Some((status, code)) = shared.take_failure() {
        shared.failed.fetch_add(1, Ordering::SeqCst);
        if let Some(length) = request.content_length {
            shared.pump(client, &mut io::sink(), &body_start, Some(length), &done)?;
        }
        shared.delay()?;
        shared.write_all(client, &error_response(status, &code, id, request.is_head))?;
        linger_close(shared, client);
        return Ok(());
    }

    let mut upstream = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(_) => {
            shared.write_all(client, &error_response(502, "BadGateway", id, request.is_head))?;
            linger_close(shared, client);
            return Ok(());
        }
    };
    upstream.set_read_timeout(Some(TICK))?;
    upstream.set_write_timeout(Some(TICK))?;
    upstream.set_nodelay(true)?;
    shared.write_all(&mut upstream, &request.with_connection_close())?;

    let outcome = thread::scope(|scope| {
        if request.chunked {
            // No length to copy: pipe the body beside the response until the response is done.
            let mut from = client.try_clone()?;
            let mut to = upstream.try_clone()?;
            let (done, body_start) = (&done, &body_start);
            scope.spawn(move || shared.pump(&mut from, &mut to, body_start, None, done));
        } else {
            let length = request.content_length.unwrap_or(0);
            // A failed write upstream may mean the server answered early and closed (it refused
            // the request before reading its body): relay that answer all the same.
            let _ = shared.pump(client, &mut upstream, &body_start, Some(length), &done);
        }
        let outcome = relay_response(shared, &mut upstream, client);
        done.store(true, Ordering::SeqCst);
        outcome
    })?;
    match outcome {
        Relayed::Whole => linger_close(shared, client),
        Relayed::Cut => reset(client),
    }
    Ok(())
}

enum Relayed {
    Whole,
    Cut,
}

/// Relays the upstream's final response (1xx ones are dropped) until upstream EOF, cutting it
/// when a reset is due.
fn relay_response(shared: &Shared, upstream: &mut TcpStream, client: &mut TcpStream) -> io::Result<Relayed> {
    let mut buf = Vec::new();
    let head_len = loop {
        let head_len = shared
            .read_head(upstream, &mut buf)?
            .ok_or(ErrorKind::UnexpectedEof)?;
        let informational = buf
            .split(|b| *b == b' ')
            .nth(1)
            .is_some_and(|status| status.first() == Some(&b'1'));
        if !informational {
            break head_len;
        }
        buf.drain(..head_len);
    };
    let head = Head::parse(&buf[..head_len]).ok_or(ErrorKind::InvalidData)?;
    shared.delay()?;
    let mut budget = shared.take_reset();
    // Sends what the budget allows; false once the response is to be cut here.
    let mut send = |client: &mut TcpStream, data: &[u8]| -> io::Result<bool> {
        let Some(left) = budget.as_mut() else {
            shared.write_all(client, data)?;
            return Ok(true);
        };
        let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        shared.write_all(client, &data[..n])?;
        *left -= n as u64;
        Ok(n == data.len() && *left > 0)
    };
    if !send(client, &head.with_connection_close())? || !send(client, &buf[head_len..])? {
        return Ok(Relayed::Cut);
    }
    let mut chunk = vec![0u8; CHUNK];
    loop {
        match shared.read(upstream, &mut chunk)? {
            0 => return Ok(Relayed::Whole),
            n => {
                if !send(client, &chunk[..n])? {
                    return Ok(Relayed::Cut);
                }
            }
        }
    }
}

/// Closes with a TCP reset: SO_LINGER on with a zero timeout makes close() send RST.
fn reset(client: &mut TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (owned by `client`), and the pointer and length describe
    // `linger`, which outlives the call.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // The caller drops `client` right after: that close() is the reset.
}

/// Closes cleanly: stops writing, then reads what the client still sends until it closes (it
/// has our `Connection: close`) or LINGER passes, so no unread byte turns the close into a reset.
fn linger_close(shared: &Shared, client: &mut TcpStream) {
    let _ = client.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.stopping().is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A request or response head, split into lines; only what the proxy needs is interpreted.
struct Head<'a> {
    start_line: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
    is_head: bool,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

impl<'a> Head<'a> {
    /// `head` runs through its blank line. Bytes, not text: header values may be any octets,
    /// and a signed request must reach upstream unchanged.
    fn parse(head: &'a [u8]) -> Option<Head<'a>> {
        let mut lines = head
            .strip_suffix(b"\r\n\r\n")?
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
        let start_line = lines.next()?;
        let mut parsed = Head {
            start_line,
            headers: Vec::new(),
            is_head: start_line.starts_with(b"HEAD "),
            content_length: None,
            chunked: false,
            expect_continue: false,
        };
        for line in lines {
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                parsed.content_length = std::str::from_utf8(value).ok()?.parse().ok();
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                parsed.chunked = value.to_ascii_lowercase().ends_with(b"chunked");
            } else if name.eq_ignore_ascii_case(b"expect") {
                parsed.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            parsed.headers.push((name, value));
        }
        Some(parsed)
    }

    /// The head with its connection headers replaced by `Connection: close`.
    fn with_connection_close(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        out.extend_from_slice(self.start_line);
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            let hop_by_hop = [&b"connection"[..], b"keep-alive", b"proxy-connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h));
            if !hop_by_hop {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

/// An S3-style error answer. A HEAD answer has the body's Content-Length but no body.
fn error_response(status: u16, code: &str, id: u64, head_only: bool) -> Vec<u8> {
    let escaped = code
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let request_id = format!("fault-proxy-{id}");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{escaped}</Code>\
         <Message>injected by the test fault proxy</Message><RequestId>{request_id}</RequestId></Error>"
    );
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Slow Down",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: {request_id}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
