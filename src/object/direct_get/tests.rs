use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;

use super::*;
use crate::object::buffers::{BODY_ALIGN, BufferPool};

// ---------------------------------------------------------------------------------------------
// A scripted fake server.
// ---------------------------------------------------------------------------------------------

/// What the fake server does with a connection once it has written a reply.
#[derive(Clone, Copy, Debug)]
enum After {
    /// Reads the next request on it.
    Keep,
    /// Closes it.
    Close,
    /// Holds it open and says nothing more.
    Hang,
    /// Writes these bytes 50 ms later, unasked, and closes it.
    Unsolicited(&'static [u8]),
}

/// The fake server's answer to one request: bytes written in `pieces` (one write each, `pause`
/// apart), then `after`.
struct Reply {
    pieces: Vec<Vec<u8>>,
    pause: Duration,
    after: After,
}

impl Reply {
    /// `bytes` in one write; the connection then carries the next request.
    fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self::in_pieces(vec![bytes.into()])
    }

    fn in_pieces(pieces: Vec<Vec<u8>>) -> Self {
        Self {
            pieces,
            pause: Duration::ZERO,
            after: After::Keep,
        }
    }

    /// Reads the request and never answers it.
    fn silent() -> Self {
        Self::in_pieces(Vec::new()).then(After::Hang)
    }

    fn paused(mut self, pause: Duration) -> Self {
        self.pause = pause;
        self
    }

    fn then(mut self, after: After) -> Self {
        self.after = after;
        self
    }
}

/// A server on 127.0.0.1 that answers the requests it receives, on whatever connection, with
/// its replies in order; it records each request head and counts the connections it accepts.
struct FakeServer {
    port: u16,
    /// Whether it speaks TLS (for `localhost`, the name its certificate has).
    tls: bool,
    requests: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
}

impl FakeServer {
    async fn start(replies: Vec<Reply>) -> Self {
        Self::start_with(replies, None).await
    }

    /// As [`FakeServer::start`], each connection over TLS when `tls` is given.
    async fn start_with(replies: Vec<Reply>, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let server = Self {
            port,
            tls: tls.is_some(),
            requests: requests.clone(),
            accepted: accepted.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (requests, replies) = (requests.clone(), replies.clone());
                match tls.clone() {
                    None => drop(tokio::spawn(serve(stream, requests, replies))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(stream, requests, replies).await;
                        }
                    })),
                }
            }
        });
        server
    }

    /// A URL on this server, as a presigned one looks.
    fn url(&self, path: &str) -> String {
        let origin = match self.tls {
            true => "https://localhost",
            false => "http://127.0.0.1",
        };
        format!(
            "{origin}:{}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
            self.port
        )
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> SignedGet {
        SignedGet {
            uri: self.url(path),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One connection of the fake server: a request head, the next reply, and so on.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    requests: Arc<Mutex<Vec<String>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
) {
    let mut received = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read_buf(&mut received).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head: Vec<u8> = received.drain(..end).collect();
        requests.lock().unwrap().push(String::from_utf8(head).unwrap());
        let Some(reply) = replies.lock().unwrap().pop_front() else {
            return;
        };
        for (nth, piece) in reply.pieces.iter().enumerate() {
            if nth > 0 && !reply.pause.is_zero() {
                tokio::time::sleep(reply.pause).await;
            }
            if stream.write_all(piece).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        match reply.after {
            After::Keep => {}
            After::Close => return,
            After::Hang => {
                std::future::pending::<()>().await;
            }
            After::Unsolicited(bytes) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.write_all(bytes).await;
                let _ = stream.flush().await;
                return;
            }
        }
    }
}

/// A head of a 206 answer with a body of `length` bytes and `extra` header lines.
fn partial_head(length: usize, extra: &str) -> String {
    format!("HTTP/1.1 206 Partial Content\r\nContent-Length: {length}\r\n{extra}\r\n")
}

/// A whole 206 answer of `body`.
fn partial(body: &[u8]) -> Vec<u8> {
    let mut answer = partial_head(body.len(), "").into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// `len` bytes of a pattern that shows where a byte came from.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|at| (at % 251) as u8 ^ (at >> 16) as u8).collect()
}

/// A client that waits `request_timeout` for an answer or a piece of a body.
fn client(request_timeout: Duration) -> DirectGet {
    DirectGet::new(BufferPool::default(), request_timeout, Duration::from_secs(1))
}

/// A client for tests that do not wait for a timeout.
fn patient() -> DirectGet {
    client(Duration::from_secs(2))
}

/// A client for tests that wait for a timeout.
fn hasty() -> DirectGet {
    client(Duration::from_millis(300))
}

/// What a GET goes over: TCP, or TLS over TCP (whose reads take another path through the
/// connection's layers: rustls, and the read-ahead buffer under it).
#[derive(Clone, Copy, Debug)]
enum Wire {
    Tcp,
    Tls,
}

/// A fake server answering with `replies` over `wire`, and a client of `request_timeout` that
/// trusts it.
async fn over(wire: Wire, replies: Vec<Reply>, request_timeout: Duration) -> (FakeServer, DirectGet) {
    let direct = client(request_timeout);
    let server = match wire {
        Wire::Tcp => FakeServer::start(replies).await,
        Wire::Tls => {
            let (acceptor, trusted) = tls_pair();
            direct.tls.set(Ok(trusted)).unwrap();
            FakeServer::start_with(replies, Some(acceptor)).await
        }
    };
    (server, direct)
}

/// Reads `body` whole from `server` (checking it came as sent), and says how many bodies came
/// slower than their low-water mark meanwhile.
async fn slowed_reading_whole(direct: &DirectGet, server: &FakeServer, body: &[u8]) -> u64 {
    let got = direct
        .get(&server.get("/b/k", &[]), 0..body.len() as u64, None)
        .await
        .unwrap();
    assert!(got.data[..] == body[..]);
    direct.slowed_by_low_water()
}

/// Two tests of one check: `$tcp` runs it over TCP, `$tls` over TLS.
macro_rules! over_both_wires {
    ($check:ident: $tcp:ident, $tls:ident) => {
        #[tokio::test]
        async fn $tcp() {
            $check(Wire::Tcp).await;
        }

        #[tokio::test]
        async fn $tls() {
            $check(Wire::Tls).await;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Pure functions.
// ---------------------------------------------------------------------------------------------

/// The mark never asks for more than the socket still has to bring, even with a whole TLS
/// record (the largest TLS 1.2 allows, 16 KiB and 2 KiB of expansion, and its header) held
/// unread above it; and never for more than [`RECEIVE_LOW_WATER`].
#[test]
fn a_low_water_mark_leaves_room_for_a_tls_record_held_above_the_socket() {
    const LARGEST_RECORD: usize = 5 + (16 << 10) + 2048;
    for room in (0..(4 << 20))
        .step_by(977)
        .chain([LOW_WATER_TAIL, LOW_WATER_TAIL + 1, 1 << 20])
    {
        let ceiling = low_water_ceiling(room);
        assert!(ceiling <= RECEIVE_LOW_WATER, "{ceiling} for {room}");
        assert!(
            ceiling == 0 || ceiling + LARGEST_RECORD <= room,
            "a mark of {ceiling} with {room} bytes to come"
        );
    }
    assert_eq!(low_water_ceiling(4 << 20), RECEIVE_LOW_WATER);
}

#[test]
fn an_http_url_is_taken_apart() {
    let target =
        Target::parse("http://127.0.0.1:9000/bucket/some/key?x-id=GetObject&X-Amz-Signature=ab").unwrap();
    assert_eq!(
        target,
        Target {
            origin: Origin {
                https: false,
                host: "127.0.0.1".to_owned(),
                port: 9000,
            },
            authority: "127.0.0.1:9000".to_owned(),
            path_and_query: "/bucket/some/key?x-id=GetObject&X-Amz-Signature=ab".to_owned(),
        }
    );
}

#[test]
fn default_ports_are_the_schemes() {
    let https = Target::parse("https://bucket.s3.eu-west-1.amazonaws.com/key?X-Amz-Signature=ab").unwrap();
    assert_eq!(
        https.origin,
        Origin {
            https: true,
            host: "bucket.s3.eu-west-1.amazonaws.com".to_owned(),
            port: 443,
        }
    );
    assert_eq!(https.authority, "bucket.s3.eu-west-1.amazonaws.com");
    assert_eq!(https.path_and_query, "/key?X-Amz-Signature=ab");

    let http = Target::parse("http://minio.local/b/k").unwrap();
    assert_eq!(
        http.origin,
        Origin {
            https: false,
            host: "minio.local".to_owned(),
            port: 80,
        }
    );
    assert_eq!(http.authority, "minio.local");
    assert_eq!(http.path_and_query, "/b/k");
}

#[test]
fn an_explicit_port_stays_in_the_authority() {
    let target = Target::parse("https://s3.example.com:8443/b/k").unwrap();
    assert_eq!(target.origin.port, 8443);
    assert!(target.origin.https);
    assert_eq!(target.origin.host, "s3.example.com");
    assert_eq!(target.authority, "s3.example.com:8443");
}

#[test]
fn an_ipv6_host_loses_its_brackets_but_the_authority_keeps_them() {
    let target = Target::parse("http://[::1]:3900/b/k?x=1").unwrap();
    assert_eq!(
        target.origin,
        Origin {
            https: false,
            host: "::1".to_owned(),
            port: 3900,
        }
    );
    assert_eq!(target.authority, "[::1]:3900");
    assert_eq!(target.path_and_query, "/b/k?x=1");
    assert_eq!(target.origin.to_string(), "http://[::1]:3900");
}

#[test]
fn other_schemes_and_relative_urls_are_refused() {
    assert!(Target::parse("ftp://example.com/b/k").is_err());
    assert!(Target::parse("/b/k?x=1").is_err());
    assert!(Target::parse("http://exa mple.com/b/k").is_err());
}

#[test]
fn a_request_head_has_the_request_line_the_host_and_the_headers() {
    let target = Target::parse("http://127.0.0.1:9000/b/k?x=1&y=%2F").unwrap();
    let headers = vec![
        ("range".to_owned(), "bytes=0-9".to_owned()),
        ("Host".to_owned(), "127.0.0.1:9000".to_owned()),
        ("if-match".to_owned(), "\"etag\"".to_owned()),
    ];
    let head = request_head(&target, &headers).unwrap();
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "GET /b/k?x=1&y=%2F HTTP/1.1\r\nhost: 127.0.0.1:9000\r\nrange: bytes=0-9\r\nif-match: \"etag\"\r\n\r\n"
    );
}

#[test]
fn a_line_break_in_a_header_is_refused() {
    let target = Target::parse("http://127.0.0.1:9000/b/k").unwrap();
    let value = vec![("range".to_owned(), "bytes=0-9\r\nx-evil: 1".to_owned())];
    assert!(request_head(&target, &value).is_err());
    let bare = vec![("range".to_owned(), "bytes=0-9\nx-evil: 1".to_owned())];
    assert!(request_head(&target, &bare).is_err());
    let name = vec![("x-evil\r\nrange".to_owned(), "bytes=0-9".to_owned())];
    assert!(request_head(&target, &name).is_err());
}

#[test]
fn a_partial_response_head_needs_more_bytes() {
    assert_eq!(parse_response_head(b"").unwrap(), None);
    assert_eq!(
        parse_response_head(b"HTTP/1.1 206 Partial Content\r\nContent-Le").unwrap(),
        None
    );
    assert_eq!(
        parse_response_head(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n").unwrap(),
        None
    );
}

#[test]
fn a_response_head_gives_status_length_keep_alive_and_request_id() {
    let head = "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nx-amz-request-id: R42\r\n\r\n";
    let bytes = format!("{head}0123456789");
    let (response, length) = parse_response_head(bytes.as_bytes()).unwrap().unwrap();
    assert_eq!(
        response,
        ResponseHead {
            status: 206,
            content_length: Some(10),
            keep_alive: true,
            request_id: Some("R42".to_owned()),
        }
    );
    assert_eq!(length, head.len(), "the head ends where the body starts");

    let (response, _) = parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-length:  123 \r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(response.content_length, Some(123));
    assert_eq!(response.request_id, None);
}

#[test]
fn a_transfer_encoding_overrides_a_content_length() {
    let (response, _) =
        parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(response.content_length, None);
    let (response, _) = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(response.content_length, None);
    let (response, _) = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
    assert_eq!(response.content_length, None, "no framing at all");
}

#[test]
fn connection_close_and_http_1_0_do_not_keep_the_connection() {
    let (response, _) = parse_response_head(
        b"HTTP/1.1 206 Partial Content\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap()
    .unwrap();
    assert!(!response.keep_alive);
    let (response, _) =
        parse_response_head(b"HTTP/1.1 206 Partial Content\r\nconnection: Keep-Alive, Close\r\n\r\n")
            .unwrap()
            .unwrap();
    assert!(!response.keep_alive);
    let (response, _) = parse_response_head(b"HTTP/1.0 206 Partial Content\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!response.keep_alive);
    let (response, _) =
        parse_response_head(b"HTTP/1.1 206 Partial Content\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
    assert!(response.keep_alive);
}

#[test]
fn garbage_and_a_bad_content_length_are_errors() {
    assert!(parse_response_head(b"garbage\r\n\r\n").is_err());
    assert!(parse_response_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n").is_err());
    assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
}

#[test]
fn xml_elements_are_found_and_decoded() {
    let document = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
        <Message>a &lt;b&gt; &amp; &quot;c&quot; &apos;d&apos; &amp;lt;</Message>\
        <RequestId>R1</RequestId></Error>";
    assert_eq!(xml_element(document, "Code").as_deref(), Some("NoSuchKey"));
    assert_eq!(
        xml_element(document, "Message").as_deref(),
        Some("a <b> & \"c\" 'd' &lt;"),
        "entities decoded once, &amp; last"
    );
    assert_eq!(xml_element(document, "Resource"), None);
    assert_eq!(xml_element("<Error><Code>Unclosed", "Code"), None);
    assert_eq!(xml_element("", "Code"), None);
}

// ---------------------------------------------------------------------------------------------
// GETs against the fake server.
// ---------------------------------------------------------------------------------------------

/// `head` and `body` sent in writes of unequal sizes: the body's bytes before `cuts[0]` with the
/// head, then from each cut to the next, then the rest.
fn in_unequal_writes(head: String, body: &[u8], cuts: &[usize]) -> Reply {
    let mut first = head.into_bytes();
    first.extend_from_slice(&body[..cuts[0]]);
    let mut pieces = vec![first];
    let ends = cuts[1..].iter().copied().chain([body.len()]);
    pieces.extend(
        cuts.iter()
            .zip(ends)
            .map(|(&start, end)| body[start..end].to_vec()),
    );
    Reply::in_pieces(pieces)
}

#[tokio::test]
async fn a_body_arrives_whole_and_aligned() {
    let body = pattern((3 << 20) + 17);
    let head = partial_head(body.len(), "x-amz-request-id: R0\r\n");
    let reply = in_unequal_writes(head, &body, &[1000, 70_000, 2 << 20]);
    let server = FakeServer::start(vec![reply]).await;
    let direct = patient();
    let range_header = format!("bytes=0-{}", body.len() - 1);
    let request = server.get(
        "/bucket/key",
        &[
            ("range", range_header.as_str()),
            ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ],
    );

    let got = direct
        .get(&request, 0..body.len() as u64, None)
        .await
        .map(|body| body.data)
        .unwrap();

    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "the body as it was sent");
    assert_eq!(got.as_ptr() as usize % BODY_ALIGN, 0, "the body starts aligned");
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let seen = &requests[0];
    assert!(
        seen.starts_with("GET /bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)),
        "{seen}"
    );
    assert!(seen.contains(&format!("\r\nrange: {range_header}\r\n")), "{seen}");
    assert!(
        seen.contains("\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\n"),
        "{seen}"
    );
    assert_eq!(direct.kept(), 1);
}

/// Sums asked for are each piece's CRC32C, the bytes that came with the head included, however
/// the body's writes fall across the pieces; a GET that does not ask gets none.
#[tokio::test]
async fn a_body_is_summed_piece_by_piece_as_it_arrives() {
    let body = pattern((3 << 20) + 17);
    let reply = in_unequal_writes(
        partial_head(body.len(), ""),
        &body,
        &[1000, 70_000, (2 << 20) + 5],
    );
    let server = FakeServer::start(vec![reply, Reply::new(partial(&body))]).await;
    let direct = patient();
    let range_header = format!("bytes=0-{}", body.len() - 1);
    let request = server.get("/b/k", &[("range", range_header.as_str())]);

    let got = direct
        .get(&request, 0..body.len() as u64, Some(1 << 20))
        .await
        .unwrap();
    assert!(got.data[..] == body[..]);
    let expected: Vec<u32> = body.chunks(1 << 20).map(crate::checksum::crc32c).collect();
    assert_eq!(expected.len(), 4);
    assert_eq!(got.piece_sums, Some(expected));

    let unsummed = direct.get(&request, 0..body.len() as u64, None).await.unwrap();
    assert!(unsummed.data[..] == body[..]);
    assert_eq!(unsummed.piece_sums, None);
}

#[tokio::test]
async fn a_small_range_is_returned_exactly() {
    let server = FakeServer::start(vec![Reply::new(partial(b"0123456789"))]).await;
    let direct = patient();
    let request = server.get("/b/k", &[("range", "bytes=0-9")]);
    let got = direct
        .get(&request, 0..10, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"0123456789");
    assert_eq!(got.as_ptr() as usize % BODY_ALIGN, 0);
    assert!(server.requests()[0].contains("\r\nrange: bytes=0-9\r\n"));
}

#[tokio::test]
async fn two_gets_in_a_row_share_one_connection() {
    let server = FakeServer::start(vec![
        Reply::new(partial(b"first")),
        Reply::new(partial(b"second")),
    ])
    .await;
    let direct = patient();

    let first = direct
        .get(&server.get("/b/k", &[("range", "bytes=0-4")]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&first[..], b"first");
    assert_eq!(direct.kept(), 1);
    let second = direct
        .get(&server.get("/b/k", &[("range", "bytes=5-10")]), 5..11, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&second[..], b"second");
    assert_eq!(direct.kept(), 1);

    assert_eq!(server.accepted(), 1, "one connection carried both");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_kept_connection_the_server_closed_is_replaced() {
    let server = FakeServer::start(vec![
        // No `Connection: close`: the client keeps it, but the server closes it.
        Reply::new(partial(b"first")).then(After::Close),
        Reply::new(partial(b"second")),
    ])
    .await;
    let direct = patient();

    let first = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&first[..], b"first");
    assert_eq!(direct.kept(), 1);
    let second = direct
        .get(&server.get("/b/k", &[]), 0..6, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&second[..], b"second");

    assert_eq!(server.accepted(), 2, "the second GET went on a new connection");
    assert_eq!(server.requests().len(), 2);
    assert_eq!(direct.kept(), 1);
}

#[tokio::test]
async fn connection_close_is_not_kept() {
    let mut answer = partial_head(5, "Connection: close\r\n").into_bytes();
    answer.extend_from_slice(b"hello");
    let server = FakeServer::start(vec![Reply::new(answer).then(After::Close)]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn an_http_1_0_answer_is_not_kept() {
    let server = FakeServer::start(vec![Reply::new(
        b"HTTP/1.0 206 Partial Content\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
    )])
    .await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn a_body_that_ends_early_is_unreachable_and_retryable() {
    let mut answer = partial_head(100, "").into_bytes();
    answer.extend_from_slice(&[7; 40]);
    let server = FakeServer::start(vec![Reply::new(answer).then(After::Close)]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..100, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    let GetFailure::Failed(error @ ObjectError::Unreachable(_)) = &failure else {
        panic!("expected Failed(Unreachable), got {failure:?}");
    };
    assert!(error.is_retryable());
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn a_head_cut_short_is_unreachable() {
    let server = FakeServer::start(vec![
        Reply::new(b"HTTP/1.1 206 Partial Content\r\nConte".to_vec()).then(After::Close),
    ])
    .await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(failure, GetFailure::Failed(ObjectError::Unreachable(_))),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_unreachable() {
    // A new connection (not a kept one) closed before any answer is not sent again.
    let server = FakeServer::start(vec![Reply::new(Vec::new()).then(After::Close)]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(failure, GetFailure::Failed(ObjectError::Unreachable(_))),
        "{failure:?}"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_body_that_goes_silent_times_out() {
    let mut answer = partial_head(100, "").into_bytes();
    answer.extend_from_slice(&[7; 40]);
    let server = FakeServer::start(vec![Reply::new(answer).then(After::Hang)]).await;
    let direct = hasty();
    let started = Instant::now();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..100, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    let GetFailure::Failed(error @ ObjectError::TimedOut(_)) = &failure else {
        panic!("expected Failed(TimedOut), got {failure:?}");
    };
    assert!(error.is_retryable());
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(direct.kept(), 0);
}

/// A body that comes slower than the receive low-water mark, each piece well within the request
/// timeout of the last but the mark's worth of them not, arrives whole: a read under the mark
/// looks whether bytes wait below it, and a body counts as silent only when nothing comes.
async fn a_body_slower_than_the_low_water_mark_is_read_as_it_comes(wire: Wire) {
    let body = pattern((3 << 20) / 2);
    let mut pieces: Vec<Vec<u8>> = body.chunks(256 << 10).map(<[u8]>::to_vec).collect();
    pieces.insert(0, partial_head(body.len(), "").into_bytes());
    let reply = Reply::in_pieces(pieces).paused(Duration::from_millis(150));
    // Silence of 500 ms fails a read; the mark's 1 MiB takes four pieces, 600 ms.
    let (server, direct) = over(wire, vec![reply], Duration::from_millis(500)).await;
    assert_eq!(
        slowed_reading_whole(&direct, &server, &body).await,
        1,
        "the mark gave way once, then no more"
    );
}

over_both_wires!(a_body_slower_than_the_low_water_mark_is_read_as_it_comes:
    a_body_slower_than_the_low_water_mark_is_read_as_it_comes_over_tcp,
    a_body_slower_than_the_low_water_mark_is_read_as_it_comes_over_tls);

/// A body whose last piece comes after a pause, on a connection that stays open after it, is
/// read to its end without its reader ever waiting out a low-water mark: near the end the mark
/// never asks the socket for more than is still to come, under TLS either, whose layers hold
/// some of the body's bytes before handing them over.
async fn a_late_last_piece_is_read_without_waiting_on_a_mark(wire: Wire) {
    let body = pattern((5 << 20) + 12345);
    // The reader drains the first piece and waits, under a mark, for the last 100 KiB.
    let reply = in_unequal_writes(partial_head(body.len(), ""), &body, &[body.len() - (100 << 10)]);
    let reply = reply.paused(Duration::from_millis(100)).then(After::Hang);
    let (server, direct) = over(wire, vec![reply], Duration::from_secs(2)).await;
    assert_eq!(
        slowed_reading_whole(&direct, &server, &body).await,
        0,
        "a read waited out its mark over {wire:?}"
    );
}

over_both_wires!(a_late_last_piece_is_read_without_waiting_on_a_mark:
    a_late_last_piece_over_tcp_is_read_without_waiting_on_a_mark,
    a_late_last_piece_over_tls_is_read_without_waiting_on_a_mark);

/// After a body read under a low-water mark, the next answer on the same connection is read as
/// soon as it comes: a mark left on the socket would hold back a small answer until it timed out.
async fn a_small_answer_after_a_large_body_is_not_held_back(wire: Wire) {
    // The large body's last 2 MiB come in one write, read at once under a mark of 1 MiB.
    let large = pattern(3 << 20);
    let first = in_unequal_writes(partial_head(large.len(), ""), &large, &[1 << 20]);
    // The small answer comes 100 ms after its request, so its reader waits for it.
    let late = Reply::in_pieces(vec![Vec::new(), partial(b"small")]);
    let pause = Duration::from_millis(100);
    let (server, direct) = over(
        wire,
        vec![first.paused(pause), late.paused(pause)],
        Duration::from_secs(2),
    )
    .await;
    let got = direct
        .get(&server.get("/b/k", &[]), 0..large.len() as u64, None)
        .await
        .unwrap();
    assert!(got.data[..] == large[..]);
    let started = Instant::now();
    let got = direct.get(&server.get("/b/k", &[]), 0..5, None).await.unwrap();
    assert_eq!(&got.data[..], b"small");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "held back for {took:?}");
    assert_eq!(server.accepted(), 1, "both on one connection");
}

over_both_wires!(a_small_answer_after_a_large_body_is_not_held_back:
    a_small_answer_after_a_large_body_on_the_same_connection_is_not_held_back,
    a_small_answer_after_a_large_body_on_the_same_tls_connection_is_not_held_back);

/// A large body that stops, with fewer bytes waiting than its low-water mark, times out as a
/// silent one: the bytes that came are read, then nothing more comes for the request timeout.
async fn a_large_body_that_goes_silent_under_the_low_water_mark_times_out(wire: Wire) {
    let mut answer = partial_head(3 << 20, "").into_bytes();
    answer.extend_from_slice(&pattern(200 << 10));
    let reply = Reply::new(answer).then(After::Hang);
    let (server, direct) = over(wire, vec![reply], Duration::from_millis(300)).await;
    let started = Instant::now();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..3 << 20, None)
        .await
        .unwrap_err();
    let GetFailure::Failed(ObjectError::TimedOut(message)) = &failure else {
        panic!("expected Failed(TimedOut), got {failure:?}");
    };
    assert!(message.contains(&format!("after {} of", 200 << 10)), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(direct.kept(), 0);
}

over_both_wires!(a_large_body_that_goes_silent_under_the_low_water_mark_times_out:
    a_large_body_that_goes_silent_under_the_low_water_mark_times_out_over_tcp,
    a_large_body_that_goes_silent_under_the_low_water_mark_times_out_over_tls);

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = FakeServer::start(vec![Reply::silent()]).await;
    let direct = hasty();
    let started = Instant::now();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..100, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(failure, GetFailure::Failed(ObjectError::TimedOut(_))),
        "{failure:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.requests().len(), 1, "the request was sent");
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let direct = patient();
    let request = SignedGet {
        uri: format!("http://127.0.0.1:{port}/b/k"),
        headers: Vec::new(),
    };
    let failure = direct
        .get(&request, 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    let GetFailure::Failed(error @ ObjectError::Unreachable(_)) = &failure else {
        panic!("expected Failed(Unreachable), got {failure:?}");
    };
    assert!(error.is_retryable());
}

#[tokio::test]
async fn an_error_answer_is_refused_with_its_code_and_message_and_its_connection_kept() {
    let document = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>\
        <Message>The specified key does not exist.</Message><Key>k</Key><RequestId>R1</RequestId></Error>";
    let answer = format!(
        "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nx-amz-request-id: R1\r\n\
         Content-Length: {}\r\n\r\n{document}",
        document.len()
    );
    let server = FakeServer::start(vec![Reply::new(answer), Reply::new(partial(b"after"))]).await;
    let direct = patient();

    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert_eq!(
        failure,
        GetFailure::Refused {
            status: 404,
            code: Some("NoSuchKey".to_owned()),
            message: "The specified key does not exist.".to_owned(),
            request_id: Some("R1".to_owned()),
        }
    );
    assert_eq!(direct.kept(), 1, "its body was read: the connection is kept");

    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"after");
    assert_eq!(server.accepted(), 1, "the kept connection carried the next GET");
}

#[tokio::test]
async fn an_error_without_a_document_is_refused_with_its_status() {
    let server = FakeServer::start(vec![Reply::new(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec(),
    )])
    .await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    let GetFailure::Refused {
        status,
        code,
        message,
        request_id,
    } = failure
    else {
        panic!("expected Refused, got {failure:?}");
    };
    assert_eq!(status, 503);
    assert_eq!(code, None);
    assert_eq!(message, "HTTP 503");
    assert_eq!(request_id, None);
}

#[tokio::test]
async fn an_error_whose_document_is_not_framed_is_unclassified_and_not_kept() {
    let server = FakeServer::start(vec![
        Reply::new(b"HTTP/1.1 503 Slow Down\r\nx-amz-request-id: R9\r\nConnection: close\r\n\r\n".to_vec())
            .then(After::Close),
    ])
    .await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert_eq!(failure, GetFailure::Unclassified("HTTP 503".to_owned()));
    assert_eq!(direct.kept(), 0);
}

/// Some servers send their error documents chunked: the code is in there, but this client does
/// not read chunked bodies, so it says the error is unclassified (the caller asks the SDK).
#[tokio::test]
async fn a_chunked_error_document_is_unclassified() {
    let document = "<Error><Code>NoSuchBucket</Code></Error>";
    let answer = format!(
        "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{document}\r\n0\r\n\r\n",
        document.len()
    );
    let server = FakeServer::start(vec![Reply::new(answer)]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert_eq!(failure, GetFailure::Unclassified("HTTP 404".to_owned()));
    assert_eq!(direct.kept(), 0, "a body not read leaves the connection unusable");
}

#[tokio::test]
async fn a_chunked_answer_is_declined() {
    let server = FakeServer::start(vec![Reply::new(
        b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
    )])
    .await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(matches!(failure, GetFailure::Declined(_)), "{failure:?}");
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn a_whole_object_for_a_range_not_at_the_start_is_a_service_error() {
    let server = FakeServer::start(vec![Reply::new(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec(),
    )])
    .await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[("range", "bytes=5-9")]), 5..10, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    let GetFailure::Failed(error @ ObjectError::Service { .. }) = &failure else {
        panic!("expected Failed(Service), got {failure:?}");
    };
    assert!(!error.is_retryable());
    assert_eq!(direct.kept(), 0);
}

#[tokio::test]
async fn a_whole_object_for_a_range_at_the_start_gives_the_range() {
    let object = pattern(100);
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", object.len()).into_bytes();
    answer.extend_from_slice(&object);
    let server = FakeServer::start(vec![Reply::new(answer)]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[("range", "bytes=0-9")]), 0..10, Some(4))
        .await
        .unwrap();
    assert_eq!(&got.data[..], &object[..10]);
    let sums: Vec<u32> = object[..10].chunks(4).map(crate::checksum::crc32c).collect();
    assert_eq!(
        got.piece_sums,
        Some(sums),
        "the range's bytes summed, not the rest"
    );
    assert_eq!(direct.kept(), 0, "the rest of the object is on it: not kept");
}

#[tokio::test]
async fn a_whole_object_shorter_than_the_range_is_all_of_it() {
    let server = FakeServer::start(vec![Reply::new(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
    )])
    .await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..1000, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 1);
}

#[tokio::test]
async fn a_range_the_server_clamps_gives_what_it_sent() {
    let server = FakeServer::start(vec![Reply::new(partial(b"0123456789"))]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[("range", "bytes=0-999")]), 0..1000, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"0123456789");
    assert_eq!(direct.kept(), 1, "read to its end: kept");
}

#[tokio::test]
async fn an_unexpected_success_status_is_a_service_error() {
    let server = FakeServer::start(vec![Reply::new(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec())]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(failure, GetFailure::Failed(ObjectError::Service { .. })),
        "{failure:?}"
    );
}

#[tokio::test]
async fn a_url_with_another_scheme_is_declined() {
    let direct = patient();
    let request = SignedGet {
        uri: "ftp://127.0.0.1/b/k".to_owned(),
        headers: Vec::new(),
    };
    let failure = direct
        .get(&request, 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(matches!(failure, GetFailure::Declined(_)), "{failure:?}");
}

#[test]
fn turn_off_turns_it_off_for_good() {
    let direct = patient();
    assert!(direct.is_on());
    direct.turn_off("x");
    assert!(!direct.is_on());
    direct.turn_off("y");
    assert!(!direct.is_on());
}

#[tokio::test]
async fn a_head_in_pieces_is_put_together() {
    let answer = partial(b"hello");
    let pieces = vec![
        answer[..3].to_vec(),
        answer[3..20].to_vec(),
        answer[20..answer.len() - 7].to_vec(),
        answer[answer.len() - 7..answer.len() - 5].to_vec(),
        answer[answer.len() - 5..].to_vec(),
    ];
    let server = FakeServer::start(vec![Reply::in_pieces(pieces)]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 1);
}

#[tokio::test]
async fn an_endless_head_is_unreachable() {
    let mut answer = b"HTTP/1.1 206 Partial Content\r\nx-long: ".to_vec();
    answer.resize(answer.len() + MAX_HEAD_BYTES + 10, b'a');
    let server = FakeServer::start(vec![Reply::new(answer).then(After::Hang)]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(failure, GetFailure::Failed(ObjectError::Unreachable(_))),
        "{failure:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// https.
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for `localhost`: the server's config, and the client's with that
/// certificate as its only root.
fn tls_pair() -> (tokio_rustls::TlsAcceptor, Arc<ClientConfig>) {
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certificate = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(certificate).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        Arc::new(client),
    )
}

/// A client whose https connections trust `config`'s roots instead of the platform's.
fn trusting(config: Arc<ClientConfig>) -> DirectGet {
    let direct = patient();
    direct.tls.set(Ok(config)).unwrap();
    direct
}

#[tokio::test]
async fn an_https_get_goes_over_tls_and_keeps_its_connection() {
    let (acceptor, trusted) = tls_pair();
    let first = pattern((1 << 20) + 3);
    let second = pattern(100);
    let server = FakeServer::start_with(
        vec![Reply::new(partial(&first)), Reply::new(partial(&second))],
        Some(acceptor),
    )
    .await;
    let direct = trusting(trusted);
    let url = format!("https://localhost:{}/b/k?X-Amz-Signature=ab", server.port);
    let get = SignedGet {
        uri: url,
        headers: vec![("range".to_owned(), "bytes=0-1048578".to_owned())],
    };
    let body = direct
        .get(&get, 0..(1 << 20) + 3, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert!(body[..] == first[..], "the body, decrypted");
    assert_eq!(body.as_ptr().align_offset(BODY_ALIGN), 0);
    let body = direct
        .get(&get, 0..100, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert!(body[..] == second[..]);
    assert_eq!(
        server.accepted(),
        1,
        "the second GET went on the same TLS connection"
    );
    let requests = server.requests();
    assert!(
        requests[0].starts_with("GET /b/k?X-Amz-Signature=ab HTTP/1.1\r\n"),
        "{requests:?}"
    );
    assert!(
        requests[0].contains(&format!("host: localhost:{}\r\n", server.port)),
        "{requests:?}"
    );
}

#[tokio::test]
async fn an_https_server_whose_certificate_is_not_trusted_is_unreachable() {
    let (acceptor, _trusted) = tls_pair();
    let (_other_acceptor, other_roots) = tls_pair();
    let server = FakeServer::start_with(vec![Reply::new(partial(b"secret"))], Some(acceptor)).await;
    let direct = trusting(other_roots);
    let get = SignedGet {
        uri: format!("https://localhost:{}/b/k", server.port),
        headers: Vec::new(),
    };
    match direct.get(&get, 0..6, None).await.map(|body| body.data) {
        Err(GetFailure::Failed(ObjectError::Unreachable(message))) => {
            assert!(message.contains("certificate"), "{message}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(
        server.requests().is_empty(),
        "no request went to a server not trusted"
    );
}

// ---------------------------------------------------------------------------------------------
// What a review found.
// ---------------------------------------------------------------------------------------------

/// The SDK signs the host without the scheme's default port (and hyper sends it so): an
/// endpoint written `https://host:443` must not put the port in `Host`, or every signature
/// fails to match.
#[test]
fn a_default_port_is_not_in_the_host_header() {
    for (url, host) in [
        ("https://s3.example.com:443/b/k", "s3.example.com"),
        ("http://minio:80/b/k", "minio"),
        ("http://[::1]:80/b/k", "[::1]"),
        ("https://s3.example.com:8443/b/k", "s3.example.com:8443"),
        ("http://[::1]:3900/b/k", "[::1]:3900"),
    ] {
        let head = String::from_utf8(request_head(&Target::parse(url).unwrap(), &[]).unwrap()).unwrap();
        assert!(head.contains(&format!("\r\nhost: {host}\r\n")), "{url}: {head}");
    }
}

#[test]
fn content_lengths_that_disagree_or_are_not_digits_are_errors() {
    let head = |lengths: &str| {
        parse_response_head(format!("HTTP/1.1 206 Partial Content\r\n{lengths}\r\n").as_bytes())
    };
    assert!(head("Content-Length: 5\r\nContent-Length: 45\r\n").is_err());
    assert!(head("Content-Length: 5, 45\r\n").is_err());
    assert!(head("Content-Length: +5\r\n").is_err());
    assert!(head("Content-Length: \r\n").is_err());
    let (same, _) = head("Content-Length: 5\r\nContent-Length: 5, 5\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(same.content_length, Some(5), "repeated, the same: one length");
}

/// Bytes past the body (a server that sent more than it announced) are never taken as the
/// answer to the next GET: the connection they came on is not kept.
#[tokio::test]
async fn bytes_past_the_body_are_never_a_later_answer() {
    let mut first = partial(b"hello");
    first.extend_from_slice(&partial(b"WRONG"));
    let server = FakeServer::start(vec![Reply::new(first), Reply::new(partial(b"right"))]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 0);
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"right");
    assert_eq!(server.accepted(), 2);
}

/// The same for an error document followed by more than it announced.
#[tokio::test]
async fn bytes_past_an_error_document_are_never_a_later_answer() {
    let document = "<Error><Code>SlowDown</Code></Error>";
    let mut first = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Length: {}\r\n\r\n{document}",
        document.len()
    )
    .into_bytes();
    first.extend_from_slice(&partial(b"WRONG"));
    let server = FakeServer::start(vec![Reply::new(first), Reply::new(partial(b"right"))]).await;
    let direct = patient();
    let failure = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap_err();
    assert!(
        matches!(&failure, GetFailure::Refused { code: Some(code), .. } if code == "SlowDown"),
        "{failure:?}"
    );
    assert_eq!(direct.kept(), 0);
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"right");
}

/// What a server writes on an idle kept connection (here a 503 as it sheds the connection)
/// answers no request: the next GET does not take it as its answer, and goes on a new
/// connection.
async fn an_answer_that_came_on_an_idle_connection_is_not_taken_for_the_next(wire: Wire) {
    // Unasked, on the kept connection, which the server then closes.
    let unasked = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    let replies = vec![
        Reply::new(partial(b"hello")).then(After::Unsolicited(unasked)),
        Reply::new(partial(b"right")),
    ];
    let (server, direct) = over(wire, replies, Duration::from_secs(2)).await;
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"right");
    assert_eq!(server.accepted(), 2);
}

over_both_wires!(an_answer_that_came_on_an_idle_connection_is_not_taken_for_the_next:
    an_answer_that_came_on_an_idle_connection_is_not_taken_for_the_next_over_tcp,
    an_answer_that_came_on_an_idle_tls_connection_is_not_taken_for_the_next);

/// A 408 that arrives as the answer to a GET sent on a kept connection (the server timed it out
/// just as the request went) is the connection's end, not the GET's: it goes again on a new one.
#[tokio::test]
async fn a_408_answering_a_get_on_a_kept_connection_sends_it_again() {
    let server = FakeServer::start(vec![
        Reply::new(partial(b"hello")),
        Reply::new(
            b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec(),
        )
        .then(After::Close),
        Reply::new(partial(b"right")),
    ])
    .await;
    let direct = patient();
    direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"right");
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn interim_answers_are_passed_over() {
    let mut answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n".to_vec();
    answer.extend_from_slice(&partial(b"hello"));
    let server = FakeServer::start(vec![Reply::new(answer)]).await;
    let direct = patient();
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"hello");
    assert_eq!(direct.kept(), 1);
}

/// The read-ahead cancels a GET by dropping it: a connection left in the middle of a body is
/// never kept, and the next GET reads its own answer.
async fn a_get_dropped_in_the_middle_of_its_body_leaves_nothing_behind(wire: Wire) {
    let body = pattern(100_000);
    let replies = vec![
        Reply::in_pieces(vec![
            partial_head(body.len(), "").into_bytes(),
            body[..1000].to_vec(),
        ])
        .then(After::Hang),
        Reply::new(partial(b"right")),
    ];
    let (server, direct) = over(wire, replies, Duration::from_secs(2)).await;
    let direct = Arc::new(direct);
    let dropped = {
        let (direct, get) = (direct.clone(), server.get("/b/k", &[]));
        tokio::spawn(async move { direct.get(&get, 0..100_000, None).await.map(|body| body.data) })
    };
    while server.requests().is_empty() {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(direct.kept(), 0);
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"right");
    assert_eq!(server.accepted(), 2);
}

over_both_wires!(a_get_dropped_in_the_middle_of_its_body_leaves_nothing_behind:
    a_get_dropped_in_the_middle_of_its_body_leaves_nothing_behind_over_tcp,
    a_get_dropped_in_the_middle_of_its_tls_body_leaves_nothing_behind);

#[tokio::test]
async fn several_stale_kept_connections_in_a_row_are_passed_over() {
    let server = FakeServer::start(vec![
        Reply::new(partial(b"one")).then(After::Close),
        Reply::new(partial(b"two")).then(After::Close),
        Reply::new(partial(b"three")).then(After::Close),
        Reply::new(partial(b"four")),
    ])
    .await;
    let direct = Arc::new(patient());
    // Three GETs at once: three connections, each kept, each then closed by the server.
    let gets: Vec<_> = (0..3)
        .map(|_| {
            let (direct, get) = (direct.clone(), server.get("/b/k", &[]));
            tokio::spawn(async move { direct.get(&get, 0..5, None).await.map(|body| body.data) })
        })
        .collect();
    for get in gets {
        get.await.unwrap().unwrap();
    }
    assert_eq!(direct.kept(), 3);
    let got = direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(&got[..], b"four");
    assert_eq!(server.accepted(), 4);
    assert_eq!(direct.carried(), 4);
}

#[tokio::test]
async fn turning_off_closes_the_kept_connections() {
    let server = FakeServer::start(vec![Reply::new(partial(b"hello"))]).await;
    let direct = patient();
    direct
        .get(&server.get("/b/k", &[]), 0..5, None)
        .await
        .map(|body| body.data)
        .unwrap();
    assert_eq!(direct.kept(), 1);
    direct.turn_off("a test");
    assert_eq!(direct.kept(), 0);
}
