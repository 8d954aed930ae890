//! GetObject of a range, its body received straight into a pooled, aligned buffer.
//!
//! Why it exists: the SDK's HTTP client (hyper) hands a body over in pieces of its own read
//! buffer, and `S3Client::read_body` copied each piece into the aligned buffer that the block
//! cache writes with O_DIRECT and FUSE replies are cut from. That copy was about a tenth of the
//! daemon's CPU on a cold sequential read. Here the socket's (or TLS's) reads land in that buffer
//! itself: one copy out of the kernel (or out of rustls), which the SDK pays too.
//!
//! What stays the SDK's: the request is built and signed by the SDK (a presigned GET, so the
//! endpoint, addressing style, credentials and SigV4 are all its own), and connections are made
//! by the connector its client uses (hyper-util's, with Happy Eyeballs). This module carries the
//! request over HTTP/1.1 on connections of its own, kept alive between GETs, with TLS (rustls,
//! the platform's roots, as the SDK's client) for https endpoints. Its failures are the ones the
//! SDK path gives: a refusal is handed back with S3's code and message for the caller to classify
//! as it does the SDK's, a broken connection is `Unreachable`, and the request timeout bounds the
//! wait for the answer and every silence inside the body. What it cannot carry goes to the SDK:
//! a body without a Content-Length is declined (and the caller stops using this path), an error
//! document it cannot read is unclassified (and that one GET is asked again through the SDK).
//!
//! A connection carries the next GET only if its answer was read exactly to its announced end,
//! and only if nothing arrived on it while it sat idle: bytes that no request asked for are
//! never taken as the answer to a later one.

use crate::lock;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::BufMut;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tower_service::Service;

use super::buffers::{Body, BufferPool};
use super::s3::source_chain;
use super::{ObjectError, RangeBody};
use crate::checksum::PieceSums;

/// The longest response head accepted. S3's are a few KiB at most (user metadata is limited to
/// 2 KiB); anything longer is not an S3 answer.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Headers of one response accepted at most.
const MAX_HEADERS: usize = 128;
/// The most of an error's body read for its code and message (S3's error documents are a few
/// hundred bytes). A longer one is not read, and its connection is not kept.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// How long an idle connection is kept for the next GET: under the idle timeout of S3's front
/// ends (about 20 s), so a kept connection is rarely one the server has already closed.
const IDLE_KEEP: Duration = Duration::from_secs(15);
/// Idle connections kept at most, over all origins: more than the read-ahead of a few readers
/// keeps in flight.
const MAX_IDLE: usize = 64;
/// How long a connection attempt to one address family runs before the other starts too: the
/// default of the SDK's client (hyper-util's).
const HAPPY_EYEBALLS: Duration = Duration::from_millis(300);
/// The most bytes a read of a body waits for before its task wakes (the socket's SO_RCVLOWAT):
/// one cache block. Woken for whatever had arrived, a cold read from loopback Garage took a
/// wake-up, an epoll_wait and a recv per ~290 KiB; per MiB, a third of them, and about a tenth
/// less daemon CPU per GiB. (Linux 4.18 or later: lowering the mark then wakes a reader whose
/// bytes already wait.)
const RECEIVE_LOW_WATER: usize = 1 << 20;
/// The most of a TLS connection's bytes one read from its socket takes: a `BufReader` sits under
/// rustls, which takes its small reads from it (a copy of bytes still in the CPU's cache costs
/// less than the calls it saves). rustls reads its transport into a buffer it grows 4 KiB at a
/// time, up to one record: a cold https read made a `recvfrom` per record or less, 70,000 per
/// GiB with S3's 16 KiB records (9,400 through this).
const TLS_READ_AHEAD: usize = 128 << 10;
/// The end of a body the mark never reaches into: more than the TLS layer may hold of it
/// unread when its reader waits on the socket (a record, half received: its read-ahead buffer
/// is empty then, or it would not wait), so that the mark never asks the socket for more bytes
/// than are still to come.
const LOW_WATER_TAIL: usize = 64 << 10;
/// How long a read under a low-water mark waits before looking whether fewer bytes wait: a body
/// slower than the mark per this long is read as it comes for the rest of it, as without a mark.
const LOW_WATER_PATIENCE: Duration = Duration::from_millis(200);

/// A GET as the SDK built and signed it: what goes on the wire.
#[derive(Clone, Debug)]
pub struct SignedGet {
    /// The whole URL, signature in its query.
    pub uri: String,
    /// Headers to send as they are (the signature covers them): `range`, `if-match`...
    pub headers: Vec<(String, String)>,
}

/// Why a GET of this module gave no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetFailure {
    /// The server answered with an error: its status, S3's code and message from its error
    /// document, and the request id, for the caller to classify as the SDK's errors.
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
        request_id: Option<String>,
    },
    /// The server refused with an error document this module could not read (framed otherwise
    /// than by a Content-Length: some servers send them chunked), so S3's code is unknown.
    /// Asked again through the SDK, the same error comes with its code (the status, for a log).
    Unclassified(String),
    /// The request failed as the SDK path would report it (`Unreachable`, `TimedOut`, a
    /// `Service` error for an answer that makes no sense).
    Failed(ObjectError),
    /// This module cannot carry this request or its answer; the SDK can (the reason, for a log).
    Declined(String),
}

/// Ranged GETs over connections of their own; cheap to share between tasks.
#[derive(Debug)]
pub struct DirectGet {
    /// Set when a GET was declined: the rest go through the SDK.
    off: AtomicBool,
    /// GETs whose body came this way.
    carried: AtomicU64,
    /// Bodies found arriving slower than their low-water mark, then read as they came.
    slowed: AtomicU64,
    /// TCP connections made as the SDK's client makes them: every address of the host tried,
    /// the other address family [`HAPPY_EYEBALLS`] after the first, no Nagle.
    connector: HttpConnector,
    idle: Mutex<Vec<Connection>>,
    tls: OnceLock<Result<Arc<ClientConfig>, String>>,
    buffers: BufferPool,
    request_timeout: Duration,
    connect_timeout: Duration,
}

impl DirectGet {
    /// Bodies go into `buffers`' buffers; `request_timeout` bounds the wait for an answer and
    /// each silence inside a body, `connect_timeout` a new connection and its TLS handshake.
    pub fn new(buffers: BufferPool, request_timeout: Duration, connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_happy_eyeballs_timeout(Some(HAPPY_EYEBALLS));
        Self {
            off: AtomicBool::new(false),
            carried: AtomicU64::new(0),
            slowed: AtomicU64::new(0),
            connector,
            idle: Mutex::new(Vec::new()),
            tls: OnceLock::new(),
            buffers,
            request_timeout,
            connect_timeout,
        }
    }

    /// Whether GETs are to come this way (no GET was declined yet).
    pub fn is_on(&self) -> bool {
        !self.off.load(Ordering::Relaxed)
    }

    /// Sends no more GETs this way: `reason` (a declined GET's) says why, once, in the log. The
    /// kept connections are closed.
    pub fn turn_off(&self, reason: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(reason, "ranged GETs go through the SDK's HTTP client from now on");
        }
        lock(&self.idle).clear();
    }

    /// How many GETs had their body carried this way.
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// How many bodies came slower than their low-water mark (each then read as it came): a
    /// slow link, or a mark that asked for more than was still to come, which must not happen.
    pub fn slowed_by_low_water(&self) -> u64 {
        self.slowed.load(Ordering::Relaxed)
    }

    /// The body of `request`, a GET of the bytes `range` of an object: at most `range`'s length,
    /// fewer where the object ends first (the server clamps the range). With `sum_pieces`, the
    /// CRC32C of each piece of that length, taken after each read from the socket.
    pub async fn get(
        &self,
        request: &SignedGet,
        range: Range<u64>,
        sum_pieces: Option<usize>,
    ) -> Result<RangeBody, GetFailure> {
        let target = Target::parse(&request.uri).map_err(GetFailure::Declined)?;
        let head = request_head(&target, &request.headers).map_err(GetFailure::Declined)?;
        let (mut connection, response, mut early) = self.exchange(&target, &head).await?;
        match response.status {
            206 => {}
            // A server that ignored the range sent the whole object: its start is the range's
            // start only when the range starts at 0.
            200 if range.start == 0 => {}
            200 => {
                return Err(GetFailure::Failed(ObjectError::Service {
                    code: "RangeIgnored".to_owned(),
                    message: format!("the server answered a GET of bytes {range:?} with the whole object"),
                }));
            }
            status if !(200..300).contains(&status) => {
                return Err(self.refusal(connection, &response, early).await);
            }
            status => {
                return Err(GetFailure::Failed(ObjectError::Service {
                    code: format!("HTTP {status}"),
                    message: "unexpected answer to a GET".to_owned(),
                }));
            }
        }
        let Some(length) = response.content_length else {
            return Err(GetFailure::Declined(
                "the server sent a body without a Content-Length".to_owned(),
            ));
        };
        let expected = length.min(range.end.saturating_sub(range.start));
        let expected = usize::try_from(expected)
            .map_err(|_| GetFailure::Declined("a body too large for memory".to_owned()))?;
        let mut body = self.buffers.take(expected);
        let mut sums = sum_pieces.map(PieceSums::new);
        self.read_exactly(&mut connection, &mut early, &mut body, expected, sums.as_mut())
            .await?;
        // The connection carries the next GET only if this answer was read to its end.
        // (Its low-water mark is back at 1, or it is not kept: see `read_exactly`.)
        if response.keep_alive && expected as u64 == length && early.is_empty() && connection.low_water == 1 {
            self.keep(connection);
        }
        self.carried.fetch_add(1, Ordering::Relaxed);
        Ok(RangeBody {
            data: self.buffers.freeze(body),
            piece_sums: sums.map(PieceSums::finish),
        })
    }

    /// Sends `head` and reads the answer's head, on a kept connection if there is one. A kept
    /// connection the server has closed meanwhile fails before any byte of an answer (or
    /// answers 408, the front end's word that it timed the connection out); that is no failure
    /// of the request, which goes again on the next one (a GET may be sent twice). Returns the
    /// connection, the answer's head and the bytes read past it.
    async fn exchange(
        &self,
        target: &Target,
        head: &[u8],
    ) -> Result<(Connection, ResponseHead, Vec<u8>), GetFailure> {
        loop {
            let (connection, kept) = match self.take_kept(&target.origin) {
                Some(connection) => (connection, true),
                None => (self.connect(target).await?, false),
            };
            match self.send_and_read_head(connection, head).await {
                Ok((_, response, _)) if kept && response.status == 408 => continue,
                Ok(answered) => return Ok(answered),
                Err(Exchange::ClosedBeforeAnswer(_)) if kept => continue,
                Err(Exchange::ClosedBeforeAnswer(error)) => {
                    return Err(GetFailure::Failed(ObjectError::Unreachable(format!(
                        "{}: connection closed before an answer: {error}",
                        target.origin
                    ))));
                }
                Err(Exchange::Failed(failure)) => return Err(failure),
            }
        }
    }

    async fn send_and_read_head(
        &self,
        mut connection: Connection,
        head: &[u8],
    ) -> Result<(Connection, ResponseHead, Vec<u8>), Exchange> {
        let origin = connection.origin.clone();
        let exchange = async {
            connection
                .io
                .write_all(head)
                .await
                .map_err(Exchange::ClosedBeforeAnswer)?;
            connection
                .io
                .flush()
                .await
                .map_err(Exchange::ClosedBeforeAnswer)?;
            read_response_head(&mut connection.io, &origin).await
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(Ok((response, early))) => Ok((connection, response, early)),
            Ok(Err(failed)) => Err(failed),
            Err(_) => Err(Exchange::Failed(GetFailure::Failed(ObjectError::TimedOut(
                format!("GET from {origin}: no answer within {:?}", self.request_timeout),
            )))),
        }
    }

    /// The `expected` bytes of a body into `into`: `early` (bytes read with the head) first,
    /// then straight from the connection, each read's bytes fed to `sums` while they are still
    /// in the CPU's cache. Reads wake for [`RECEIVE_LOW_WATER`] bytes at a time, but the last
    /// [`LOW_WATER_TAIL`]. A body that ends early is worth a retry, as a reset is; so is one
    /// silent for the request timeout. `early` keeps what it held past the body.
    async fn read_exactly(
        &self,
        connection: &mut Connection,
        early: &mut Vec<u8>,
        into: &mut (impl BufMut + Filled),
        expected: usize,
        mut sums: Option<&mut PieceSums>,
    ) -> Result<(), GetFailure> {
        let first = early.len().min(expected);
        into.put_slice(&early[..first]);
        early.drain(..first);
        let mut summed = 0;
        connection.set_low_water(low_water_ceiling(expected - into.filled()).max(1));
        loop {
            if let Some(sums) = sums.as_deref_mut() {
                sums.update(&into.filled_bytes()[summed..]);
                summed = into.filled();
            }
            if into.filled() >= expected {
                // (The next answer's head must wake its reader at its first byte.)
                connection.set_low_water(1);
                return Ok(());
            }
            let room = expected - into.filled();
            // Near the end the mark comes down, by halves of what may still be asked: a TLS read
            // takes one record, and setting the mark to fit each would cost a call per record.
            let ceiling = low_water_ceiling(room);
            if connection.low_water > ceiling.max(1) {
                connection.set_low_water((ceiling / 2).max(1));
            }
            let mut room = (&mut *into).limit(room);
            let failure = match self.read_some(connection, &mut room).await {
                Some(Ok(0)) => ObjectError::Unreachable(format!(
                    "body from {} ended after {} of {expected} bytes",
                    connection.origin,
                    into.filled()
                )),
                Some(Ok(_)) => continue,
                Some(Err(error)) => {
                    ObjectError::Unreachable(format!("reading a body from {}: {error}", connection.origin))
                }
                None => ObjectError::TimedOut(format!(
                    "body from {}: nothing within {:?} after {} of {expected} bytes",
                    connection.origin,
                    self.request_timeout,
                    into.filled()
                )),
            };
            return Err(GetFailure::Failed(failure));
        }
    }

    /// One read from `connection` into `into`, or `None` when no byte came for the request
    /// timeout. Under a low-water mark it looks every [`LOW_WATER_PATIENCE`] whether bytes wait
    /// below the mark; if so, the body is a slow one, and the mark goes for the rest of it, so
    /// a body counts as silent only when no byte at all arrives.
    async fn read_some(
        &self,
        connection: &mut Connection,
        into: &mut impl BufMut,
    ) -> Option<io::Result<usize>> {
        let mut deadline = Instant::now() + self.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let wait = match connection.low_water > 1 {
                true => left.min(LOW_WATER_PATIENCE),
                false => left,
            };
            // (A read dropped unfinished loses nothing: tokio's and rustls's reads are cancel
            // safe, and what it took from the socket stays with the connection's layers.)
            if let Ok(read) = tokio::time::timeout(wait, connection.io.read_buf(into)).await {
                return Some(read);
            }
            if connection.low_water > 1 && connection.bytes_waiting() > 0 {
                // Not silent: bytes came, fewer than the mark. (Found at the last look before
                // the deadline, they still get their read.)
                connection.set_low_water(1);
                self.slowed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(origin = %connection.origin, "a body comes slower than its low-water mark: read as it comes");
                deadline = deadline.max(Instant::now() + LOW_WATER_PATIENCE);
            }
        }
    }

    /// An error answer as a [`GetFailure::Refused`], its error document read for S3's code; a
    /// document that cannot be read (not framed by a Content-Length, longer than any S3 sends,
    /// cut short) makes it [`GetFailure::Unclassified`].
    async fn refusal(
        &self,
        mut connection: Connection,
        response: &ResponseHead,
        mut early: Vec<u8>,
    ) -> GetFailure {
        let unclassified = || GetFailure::Unclassified(format!("HTTP {}", response.status));
        let length = match response.content_length {
            Some(length) if length <= MAX_ERROR_BODY => length as usize,
            _ => return unclassified(),
        };
        let mut document = Vec::with_capacity(length);
        let read = self
            .read_exactly(&mut connection, &mut early, &mut document, length, None)
            .await;
        if read.is_err() {
            return unclassified();
        }
        if response.keep_alive && early.is_empty() {
            self.keep(connection);
        }
        let document = String::from_utf8_lossy(&document);
        GetFailure::Refused {
            status: response.status,
            code: xml_element(&document, "Code"),
            message: xml_element(&document, "Message").unwrap_or_else(|| format!("HTTP {}", response.status)),
            request_id: response.request_id.clone(),
        }
    }

    async fn connect(&self, target: &Target) -> Result<Connection, GetFailure> {
        let origin = &target.origin;
        let tls = match origin.https {
            true => Some(self.tls_config().map_err(GetFailure::Declined)?),
            false => None,
        };
        // The connector takes a URI; it connects, the TLS (if any) is this module's.
        let address: http::Uri = format!("http://{}/", target.authority)
            .parse()
            .map_err(|error| GetFailure::Declined(format!("unusable host {}: {error}", target.authority)))?;
        let mut connector = self.connector.clone();
        let connecting = async {
            let tcp = connector
                .call(address)
                .await
                .map_err(|error| io::Error::other(source_chain(&error)))?
                .into_inner();
            let socket = tcp.as_raw_fd();
            let io: Box<dyn Io> = match tls {
                Some(config) => {
                    let name = ServerName::try_from(origin.host.clone())
                        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                    // TLS takes its small reads from a buffer that one `recv` fills.
                    let tcp = tokio::io::BufReader::with_capacity(TLS_READ_AHEAD, tcp);
                    Box::new(TlsConnector::from(config).connect(name, tcp).await?)
                }
                None => Box::new(tcp),
            };
            Ok::<_, io::Error>((io, socket))
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok((io, socket))) => Ok(Connection {
                origin: origin.clone(),
                io,
                socket,
                low_water: 1,
                idle_since: Instant::now(),
            }),
            Ok(Err(error)) => Err(GetFailure::Failed(ObjectError::Unreachable(format!(
                "connecting to {origin}: {error}"
            )))),
            Err(_) => Err(GetFailure::Failed(ObjectError::TimedOut(format!(
                "connecting to {origin}: no connection within {:?}",
                self.connect_timeout
            )))),
        }
    }

    /// TLS as the SDK's client has it: the platform's root certificates (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` where set), aws-lc-rs, TLS 1.2 and 1.3. Made at the first https
    /// connection; should it fail, https GETs are declined (the SDK then sends them).
    fn tls_config(&self) -> Result<Arc<ClientConfig>, String> {
        let made = self.tls.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "loading the platform's root certificates");
            }
            let (added, _unparsable) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no root certificate found: https GETs cannot verify the server");
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|error| format!("TLS configuration: {error}"))
        });
        made.clone()
    }

    /// A kept connection to `origin`, the most recently used first, that has not been idle for
    /// too long and has nothing to read: bytes (or the end) arriving on an idle connection are
    /// no answer to any request of ours, and it is closed.
    fn take_kept(&self, origin: &Origin) -> Option<Connection> {
        let mut idle = lock(&self.idle);
        idle.retain(|connection| connection.idle_since.elapsed() < IDLE_KEEP);
        while let Some(at) = idle.iter().rposition(|connection| &connection.origin == origin) {
            let mut connection = idle.remove(at);
            if connection.is_quiet() {
                return Some(connection);
            }
        }
        None
    }

    fn keep(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = lock(&self.idle);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(connection);
    }

    /// Idle connections kept (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.idle).len()
    }
}

/// Where a connection goes: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    https: bool,
    /// The host name or address, without the brackets of an IPv6 address.
    host: String,
    port: u16,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A request's URL taken apart: where to connect, the `Host` header, the request target.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    origin: Origin,
    /// The `Host` header: the host, with the port only when it is not the scheme's, as the SDK's
    /// signer and its HTTP client have it (an endpoint written `https://host:443` is signed for
    /// `host`).
    authority: String,
    path_and_query: String,
}

impl Target {
    fn parse(uri: &str) -> Result<Self, String> {
        let parsed: http::Uri = uri
            .parse()
            .map_err(|error| format!("unusable URL {uri:?}: {error}"))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("unsupported scheme {other:?} in {uri:?}")),
        };
        let authority = parsed.authority().ok_or_else(|| format!("no host in {uri:?}"))?;
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host_header = match port == default_port {
            true => authority.host().to_owned(),
            false => format!("{}:{port}", authority.host()),
        };
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let path_and_query = parsed.path_and_query().map_or("/", |target| target.as_str());
        Ok(Self {
            origin: Origin {
                https,
                host: host.to_owned(),
                port,
            },
            authority: host_header,
            path_and_query: path_and_query.to_owned(),
        })
    }
}

/// The bytes of a GET's head: request line, `Host`, then `headers` (any `host` among them is the
/// same authority, and is not repeated). A value with a line break in it would split the head
/// and is refused.
fn request_head(target: &Target, headers: &[(String, String)]) -> Result<Vec<u8>, String> {
    let splits = |text: &str| text.contains(['\r', '\n']);
    let header_splits = headers.iter().any(|(name, value)| splits(name) || splits(value));
    if header_splits || splits(&target.path_and_query) || splits(&target.authority) {
        return Err("a header or the URL holds a line break".to_owned());
    }
    let mut head = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\n",
        target.path_and_query, target.authority
    );
    for (name, value) in headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
    {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// What a response's head says that a GET needs.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    status: u16,
    /// `None` for a body framed otherwise (chunked) or not framed at all.
    content_length: Option<u64>,
    /// HTTP/1.1 without `Connection: close`: the connection may carry the next request.
    keep_alive: bool,
    request_id: Option<String>,
}

impl ResponseHead {
    /// An interim answer (`100 Continue`, `103 Early Hints`): the real one follows. (101 would
    /// switch protocols, which a GET of ours never asks for.)
    fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Parses a response head from the start of `bytes`: the head and its length, or `None` when
/// more bytes are needed.
fn parse_response_head(bytes: &[u8]) -> Result<Option<(ResponseHead, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("unreadable response head: {error}")),
    };
    let values = |wanted: &'static str| {
        response
            .headers
            .iter()
            .filter(move |header| header.name.eq_ignore_ascii_case(wanted))
            .map(|header| String::from_utf8_lossy(header.value).trim().to_owned())
    };
    // A Transfer-Encoding overrides any Content-Length (RFC 9112, 6.3).
    let content_length = match values("transfer-encoding").next() {
        Some(_) => None,
        None => content_length(values("content-length"))?,
    };
    let closes = values("connection").any(|value| {
        value
            .split(',')
            .any(|option| option.trim().eq_ignore_ascii_case("close"))
    });
    let head = ResponseHead {
        status: response.code.unwrap_or(0),
        content_length,
        keep_alive: response.version == Some(1) && !closes,
        request_id: values("x-amz-request-id").next(),
    };
    Ok(Some((head, length)))
}

/// The length the Content-Length headers give, `None` without one. Every value (headers may be
/// repeated, values listed) must be the same string of digits (RFC 9110, 8.6): a response that
/// disagrees with itself cannot be framed, and its connection could not be trusted again.
fn content_length(values: impl Iterator<Item = String>) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in values {
        for item in value.split(',').map(str::trim) {
            let digits = !item.is_empty() && item.bytes().all(|byte| byte.is_ascii_digit());
            let parsed = item.parse::<u64>().ok().filter(|_| digits);
            match (parsed, length) {
                (None, _) => return Err(format!("unreadable Content-Length {value:?}")),
                (Some(parsed), Some(known)) if parsed != known => {
                    return Err(format!("Content-Lengths that disagree: {known} and {parsed}"));
                }
                (Some(parsed), _) => length = Some(parsed),
            }
        }
    }
    Ok(length)
}

/// Reads a response head, past any interim ones; returns it with the bytes read past it (the
/// body's first bytes).
async fn read_response_head(
    io: &mut Box<dyn Io>,
    origin: &Origin,
) -> Result<(ResponseHead, Vec<u8>), Exchange> {
    let failed = |message: String| Exchange::Failed(GetFailure::Failed(ObjectError::Unreachable(message)));
    let mut bytes = Vec::with_capacity(8 << 10);
    // Bytes of interim heads already passed, which count toward the bound too.
    let mut passed = 0;
    loop {
        match parse_response_head(&bytes).map_err(|error| failed(format!("{origin}: {error}")))? {
            Some((head, length)) if head.is_interim() => {
                bytes.drain(..length);
                passed += length;
                continue;
            }
            Some((head, length)) => return Ok((head, bytes.split_off(length))),
            None => {}
        }
        if passed + bytes.len() >= MAX_HEAD_BYTES {
            return Err(failed(format!(
                "{origin}: a response head longer than {MAX_HEAD_BYTES} bytes"
            )));
        }
        if bytes.capacity() == bytes.len() {
            bytes.reserve(bytes.len().max(1024));
        }
        let nothing_yet = bytes.is_empty() && passed == 0;
        match io.read_buf(&mut bytes).await {
            Ok(0) if nothing_yet => {
                return Err(Exchange::ClosedBeforeAnswer(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => {
                return Err(failed(format!(
                    "{origin} closed the connection inside a response head"
                )));
            }
            Ok(_) => {}
            Err(error) if nothing_yet => return Err(Exchange::ClosedBeforeAnswer(error)),
            Err(error) => {
                return Err(failed(format!("reading a response head from {origin}: {error}")));
            }
        }
    }
}

/// How an exchange on one connection failed.
enum Exchange {
    /// Nothing of an answer came: on a kept connection, the server had closed it.
    ClosedBeforeAnswer(io::Error),
    Failed(GetFailure),
}

/// The text of the first `<name>` element of an S3 error document, its entities decoded.
fn xml_element(document: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = document.find(&open)? + open.len();
    let length = document[start..].find(&close)?;
    let text = &document[start..start + length];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// The most a low-water mark may ask for with `room` bytes of a body still to come: at most
/// [`RECEIVE_LOW_WATER`], and never into the body's last [`LOW_WATER_TAIL`] (0: no mark).
fn low_water_ceiling(room: usize) -> usize {
    room.saturating_sub(LOW_WATER_TAIL).min(RECEIVE_LOW_WATER)
}

/// A connection's byte stream: TCP, or TLS over TCP (read through a buffer of
/// [`TLS_READ_AHEAD`] bytes).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection, kept between GETs.
struct Connection {
    origin: Origin,
    io: Box<dyn Io>,
    /// The TCP socket under `io`, which `io` owns and keeps open for as long as it lives.
    socket: RawFd,
    /// The socket's receive low-water mark (SO_RCVLOWAT) as last set: 1, the kernel's default,
    /// or more while a body is read.
    low_water: usize,
    idle_since: Instant,
}

impl Connection {
    /// Sets the socket's receive low-water mark: a read, and epoll, then wait for that many
    /// bytes (or the end, or an error) before waking the reader. The kernel keeps the mark
    /// within its receive buffer's reach, and wakes a waiting reader at once when lowering it
    /// leaves enough queued. A refused change leaves the mark as it was.
    fn set_low_water(&mut self, bytes: usize) {
        if bytes == self.low_water {
            return;
        }
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: `socket` is the open TCP socket `io` owns (under TLS or not), for as long as
        // `self` lives; the option's value is a c_int, passed with its size, which the kernel
        // only reads.
        let set = unsafe {
            libc::setsockopt(
                self.socket,
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set == 0 {
            self.low_water = bytes;
        }
    }

    /// Bytes received on the socket and not yet read (0 if it cannot tell).
    fn bytes_waiting(&self) -> usize {
        let mut waiting: libc::c_int = 0;
        // SAFETY: `socket` is the open TCP socket `io` owns; FIONREAD writes one c_int.
        let asked = unsafe { libc::ioctl(self.socket, libc::FIONREAD, &raw mut waiting) };
        match asked {
            0 => usize::try_from(waiting).unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether nothing waits to be read on it: no byte, no end, no error (one read tried,
    /// without waiting).
    fn is_quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        let mut context = Context::from_waker(Waker::noop());
        Pin::new(&mut self.io)
            .poll_read(&mut context, &mut probe)
            .is_pending()
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("origin", &self.origin)
            .field("idle_since", &self.idle_since)
            .finish_non_exhaustive()
    }
}

/// What a body is read into, and how much of it is there: a pooled body, or an error document.
trait Filled {
    fn filled_bytes(&self) -> &[u8];

    fn filled(&self) -> usize {
        self.filled_bytes().len()
    }
}

impl Filled for Body {
    fn filled_bytes(&self) -> &[u8] {
        self.bytes()
    }
}

impl Filled for Vec<u8> {
    fn filled_bytes(&self) -> &[u8] {
        self
    }
}

#[cfg(test)]
mod tests;
