//! GetObject of a range, its body received straight into a pooled, aligned buffer.
//!
//! Why it exists: the SDK's HTTP client (hyper) hands a body over in pieces of its own read
//! buffer, and `S3Client::read_body` copied each piece into the aligned buffer that the block
//! cache writes with O_DIRECT and FUSE replies are cut from. That copy was about a tenth of the
//! daemon's CPU on a cold sequential read. Here the socket's (or TLS's) reads land in that buffer
//! itself: one copy out of the kernel (or out of rustls), which the SDK pays too.
//!
//! What stays the SDK's: the request is built and signed by the SDK (a presigned GET, so the
//! endpoint, addressing style, credentials and SigV4 are all its own). This module only carries
//! that request over HTTP/1.1 on connections of its own, kept alive between GETs, with TLS
//! (rustls, the platform's roots, as the SDK's client) for https endpoints. Its failures are the
//! ones the SDK path gives: a refusal is handed back with S3's code and message for the caller to
//! classify as it does the SDK's, a broken connection is `Unreachable`, and the request timeout
//! bounds the wait for the answer and every silence inside the body. An answer this module cannot
//! carry (a body without a Content-Length) is declined, and the caller sends that GET through the
//! SDK.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::ObjectError;
use super::buffers::BufferPool;

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
    /// The server answered with an error: its status, S3's code and message when its error
    /// document gave them, and the request id, for the caller to classify as the SDK's errors.
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
        request_id: Option<String>,
    },
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
        Self {
            off: AtomicBool::new(false),
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

    /// Sends no more GETs this way: `reason` (a declined GET's) says why, once, in the log.
    pub fn turn_off(&self, reason: &str) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::warn!(reason, "ranged GETs go through the SDK's HTTP client from now on");
        }
    }

    /// The body of `request`, a GET of the bytes `range` of an object: at most `range`'s length,
    /// fewer where the object ends first (the server clamps the range).
    pub async fn get(&self, request: &SignedGet, range: Range<u64>) -> Result<Bytes, GetFailure> {
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
        let body = self.read_body(&mut connection, &mut early, expected).await?;
        // The connection carries the next GET only if this answer was read to its end.
        if response.keep_alive && expected as u64 == length && early.is_empty() {
            self.keep(connection);
        }
        Ok(body)
    }

    /// Sends `head` and reads the answer's head, on a kept connection if there is one. A kept
    /// connection the server has closed meanwhile fails before any byte of an answer; that is
    /// no failure of the request, which goes again on the next one (a GET may be sent twice).
    /// Returns the connection, the answer's head and the bytes read past it.
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

    /// The `expected` bytes of a body into one pooled buffer: `early` (bytes read with the
    /// head) first, then straight from the connection. A body that ends early is worth a retry,
    /// as a reset is; so is one silent for the request timeout. `early` keeps what it held past
    /// the body.
    async fn read_body(
        &self,
        connection: &mut Connection,
        early: &mut Vec<u8>,
        expected: usize,
    ) -> Result<Bytes, GetFailure> {
        let mut body = self.buffers.take(expected);
        let first = early.len().min(expected);
        body.extend_from_slice(&early[..first]);
        early.drain(..first);
        while body.len() < expected {
            let room = expected - body.len();
            let mut room = (&mut body).limit(room);
            let read = tokio::time::timeout(self.request_timeout, connection.io.read_buf(&mut room));
            let failure = match read.await {
                Ok(Ok(0)) => ObjectError::Unreachable(format!(
                    "body from {} ended after {} of {expected} bytes",
                    connection.origin,
                    body.len()
                )),
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => {
                    ObjectError::Unreachable(format!("reading a body from {}: {error}", connection.origin))
                }
                Err(_) => ObjectError::TimedOut(format!(
                    "body from {}: nothing within {:?} after {} of {expected} bytes",
                    connection.origin,
                    self.request_timeout,
                    body.len()
                )),
            };
            return Err(GetFailure::Failed(failure));
        }
        Ok(self.buffers.freeze(body))
    }

    /// An error answer as a [`GetFailure::Refused`], its error document read when it is short.
    async fn refusal(
        &self,
        mut connection: Connection,
        response: &ResponseHead,
        mut early: Vec<u8>,
    ) -> GetFailure {
        let document = match response.content_length {
            Some(length) if length <= MAX_ERROR_BODY => {
                match self.read_body(&mut connection, &mut early, length as usize).await {
                    Ok(document) => {
                        if response.keep_alive && early.is_empty() {
                            self.keep(connection);
                        }
                        document
                    }
                    // The status alone says what happened.
                    Err(_) => Bytes::new(),
                }
            }
            _ => Bytes::new(),
        };
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
        let connecting = async {
            let tcp = TcpStream::connect((origin.host.as_str(), origin.port)).await?;
            // Requests are one small write each; do not hold them back for an ACK.
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match tls {
                Some(config) => {
                    let name = ServerName::try_from(origin.host.clone())
                        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
                    Box::new(TlsConnector::from(config).connect(name, tcp).await?)
                }
                None => Box::new(tcp),
            };
            Ok::<_, io::Error>(io)
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(io)) => Ok(Connection {
                origin: origin.clone(),
                io,
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

    /// A kept connection to `origin` not idle for too long, the most recently used first.
    fn take_kept(&self, origin: &Origin) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        idle.retain(|connection| connection.idle_since.elapsed() < IDLE_KEEP);
        let at = idle.iter().rposition(|connection| &connection.origin == origin)?;
        Some(idle.remove(at))
    }

    fn keep(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(connection);
    }

    /// Idle connections kept (for tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
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
    /// As the URL has it (port included when not the scheme's), which the signature covers.
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
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path_and_query = parsed.path_and_query().map_or("/", |target| target.as_str());
        Ok(Self {
            origin: Origin {
                https,
                host: host.to_owned(),
                port,
            },
            authority: authority.as_str().to_owned(),
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
    let header = |wanted: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(wanted))
            .and_then(|header| std::str::from_utf8(header.value).ok())
            .map(str::trim)
    };
    // A Transfer-Encoding overrides any Content-Length (RFC 9112, 6.3).
    let content_length = match (header("transfer-encoding"), header("content-length")) {
        (Some(_), _) | (None, None) => None,
        (None, Some(value)) => Some(
            value
                .parse::<u64>()
                .map_err(|_| format!("unreadable Content-Length {value:?}"))?,
        ),
    };
    let closes = header("connection").is_some_and(|value| {
        value
            .split(',')
            .any(|option| option.trim().eq_ignore_ascii_case("close"))
    });
    let head = ResponseHead {
        status: response.code.unwrap_or(0),
        content_length,
        keep_alive: response.version == Some(1) && !closes,
        request_id: header("x-amz-request-id").map(str::to_owned),
    };
    Ok(Some((head, length)))
}

/// Reads a response head; returns it with the bytes read past it (the body's first bytes).
async fn read_response_head(
    io: &mut Box<dyn Io>,
    origin: &Origin,
) -> Result<(ResponseHead, Vec<u8>), Exchange> {
    let mut bytes = Vec::with_capacity(8 << 10);
    loop {
        let read = io.read_buf(&mut bytes).await;
        match read {
            Ok(0) if bytes.is_empty() => {
                return Err(Exchange::ClosedBeforeAnswer(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => {
                return Err(Exchange::Failed(GetFailure::Failed(ObjectError::Unreachable(
                    format!("{origin} closed the connection inside a response head"),
                ))));
            }
            Ok(_) => {}
            Err(error) if bytes.is_empty() => return Err(Exchange::ClosedBeforeAnswer(error)),
            Err(error) => {
                return Err(Exchange::Failed(GetFailure::Failed(ObjectError::Unreachable(
                    format!("reading a response head from {origin}: {error}"),
                ))));
            }
        }
        let parsed = parse_response_head(&bytes).map_err(|error| {
            Exchange::Failed(GetFailure::Failed(ObjectError::Unreachable(format!(
                "{origin}: {error}"
            ))))
        })?;
        if let Some((head, length)) = parsed {
            return Ok((head, bytes.split_off(length)));
        }
        if bytes.len() >= MAX_HEAD_BYTES {
            return Err(Exchange::Failed(GetFailure::Failed(ObjectError::Unreachable(
                format!("{origin}: a response head longer than {MAX_HEAD_BYTES} bytes"),
            ))));
        }
        if bytes.capacity() == bytes.len() {
            bytes.reserve(bytes.len());
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

/// A byte stream a connection runs on: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One connection, kept between GETs.
struct Connection {
    origin: Origin,
    io: Box<dyn Io>,
    idle_since: Instant,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("origin", &self.origin)
            .field("idle_since", &self.idle_since)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
