//! The fault proxy of the mount tests (`tests/common/fault_proxy.rs`) checked against the real
//! Garage of `scripts/s3-server`: plain forwarding and latency through the crate's `S3Client`,
//! every fault mode through raw HTTP on a `TcpStream`, where the exact bytes, resets, refused
//! connects and silences are visible. Unsigned raw requests get Garage's `403 AccessDenied`,
//! which is enough to tell a forwarded request from one the proxy answered itself.

mod common;

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault_proxy::FaultProxy;
use common::{TestPrefix, WAIT, wait_until};
use s3mount::object::ObjectClient;
use s3mount::object::s3::{S3Client, S3Settings};

/// How long a read must see nothing for a stall to count as one: far above loopback latency.
const SILENCE: Duration = Duration::from_millis(700);

/// The Garage S3 endpoint as a socket address.
fn upstream() -> SocketAddr {
    let url = &common::settings().endpoint_url;
    let host_port = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("the test server's endpoint {url:?} is plain http"))
        .trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .expect("resolving the test server")
        .next()
        .expect("an address for the test server")
}

fn start_proxy() -> FaultProxy {
    FaultProxy::start(upstream()).expect("starting the fault proxy")
}

/// A current-thread runtime and an `S3Client` whose endpoint is the proxy.
fn s3_client(proxy: &FaultProxy) -> (tokio::runtime::Runtime, S3Client) {
    let settings = common::settings();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = runtime
        .block_on(S3Client::new(S3Settings {
            bucket: settings.bucket.clone(),
            region: Some(settings.region.clone()),
            endpoint_url: Some(proxy.url()),
            force_path_style: true,
            profile: None,
            no_sign_request: false,
            request_timeout: None,
            sdk_gets: false,
        }))
        .expect("S3 client");
    (runtime, client)
}

/// An unsigned request for `key` of the test bucket, with a body when `body` is not empty.
fn raw_request(proxy: &FaultProxy, method: &str, key: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let bucket = &common::settings().bucket;
    let length = if body.is_empty() && (method == "GET" || method == "HEAD") {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut request = format!(
        "{method} /{bucket}/{key} HTTP/1.1\r\nHost: {}\r\n{extra_headers}{length}\r\n",
        proxy.addr()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let stream = TcpStream::connect(proxy.addr()).expect("connecting to the proxy");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

/// Reads until EOF or an error: the bytes, and how the stream ended.
fn read_to_end(stream: &mut TcpStream) -> (Vec<u8>, io::Result<()>) {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (bytes, Ok(())),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return (bytes, Err(error)),
        }
    }
}

/// Sends `request` on a new connection and reads the whole answer, which must end cleanly.
fn exchange(proxy: &FaultProxy, request: &[u8]) -> String {
    let mut stream = connect(proxy);
    stream.write_all(request).expect("sending the request");
    let (bytes, end) = read_to_end(&mut stream);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    end.unwrap_or_else(|e| panic!("the answer should end with a clean close, got {e} after {text:?}"));
    text
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

/// The value of header `name` (case-insensitive) in a response head.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Asserts Garage's own answer to an unsigned request (not one the proxy made up).
fn assert_from_garage(response: &str) {
    assert!(
        status_line(response).starts_with("HTTP/1.1 403"),
        "Garage answers unsigned requests with 403: {response:?}"
    );
    assert!(
        body(response).contains("<Code>AccessDenied</Code>"),
        "{response:?}"
    );
    assert!(!response.contains("fault-proxy"), "{response:?}");
}

/// The names of this process's threads that belong to the proxy on `addr`.
fn proxy_threads(addr: SocketAddr) -> Vec<String> {
    let prefix = format!("fpx-{}-", addr.port());
    std::fs::read_dir("/proc/self/task")
        .expect("listing this process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect()
}

#[test]
fn put_then_get_through_the_proxy_returns_the_bytes() {
    let prefix = TestPrefix::new("proxy-forward");
    let proxy = start_proxy();
    let (runtime, client) = s3_client(&proxy);
    let key = prefix.key("blob");
    let data = Bytes::from(common::pseudo_random(7, 3 << 20));
    runtime.block_on(async {
        let etag = client
            .put(&key, data.clone())
            .await
            .expect("put through the proxy");
        let head = client.head(&key).await.expect("head through the proxy");
        assert_eq!(head.size, data.len() as u64);
        assert_eq!(head.etag, etag);
        let got = client
            .get_range(&key, 0..data.len() as u64, Some(&etag))
            .await
            .expect("get through the proxy");
        assert!(got == data, "the bytes read back differ from the bytes written");
        let middle = client
            .get_range(&key, 1000..1010, None)
            .await
            .expect("ranged get");
        assert_eq!(&middle[..], &data[1000..1010]);
    });
    assert!(proxy.requests() >= 4, "put, head, two gets: {}", proxy.requests());
    assert_eq!(proxy.failed_requests(), 0);
    // The harness's own client, straight to Garage, sees the object too.
    assert_eq!(prefix.get("blob").as_deref(), Some(&data[..]));
}

#[test]
fn latency_delays_request_and_response() {
    let prefix = TestPrefix::new("proxy-latency");
    let proxy = start_proxy();
    let (runtime, client) = s3_client(&proxy);
    let key = prefix.key("small");
    proxy.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    runtime
        .block_on(client.put(&key, Bytes::from_static(b"slow")))
        .expect("put through the slow proxy");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "200 ms each way, yet the put took {elapsed:?}"
    );
    proxy.set_latency(Duration::ZERO);
    let got = runtime.block_on(client.get_range(&key, 0..4, None)).expect("get");
    assert_eq!(&got[..], b"slow");
}

#[test]
fn raw_requests_are_forwarded_and_connections_closed() {
    let proxy = start_proxy();
    let response = exchange(&proxy, &raw_request(&proxy, "GET", "no-such-key", "", b""));
    assert_from_garage(&response);
    assert_eq!(header(&response, "connection"), Some("close"), "{response:?}");
    // Each request gets its own connection, even when the client asks to keep it.
    let response = exchange(
        &proxy,
        &raw_request(&proxy, "GET", "no-such-key", "Connection: keep-alive\r\n", b""),
    );
    assert_from_garage(&response);
    assert_eq!(proxy.requests(), 2);

    // Expect: 100-continue: the client hears `100 Continue` before it sends the body.
    let mut stream = connect(&proxy);
    let head = raw_request(&proxy, "PUT", "k", "Expect: 100-continue\r\n", b"");
    let head = String::from_utf8(head)
        .expect("ASCII")
        .replace("Content-Length: 0", "Content-Length: 5");
    stream.write_all(head.as_bytes()).expect("sending the head");
    let mut interim = [0u8; 25];
    stream
        .read_exact(&mut interim)
        .expect("reading the interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").expect("sending the body");
    let (bytes, end) = read_to_end(&mut stream);
    let response = String::from_utf8_lossy(&bytes);
    end.expect("a clean close");
    assert_from_garage(&response);
    assert_eq!(proxy.requests(), 3);
    assert_eq!(proxy.failed_requests(), 0);
}

#[test]
fn fail_next_answers_with_an_s3_error_after_reading_the_body() {
    let proxy = start_proxy();
    proxy.fail_next(3, 503, "SlowDown");

    // A body larger than the socket buffers, sent but for its last byte: the proxy must read
    // it (or the write blocks) and must not answer before it has the whole body.
    let payload = common::pseudo_random(1, 2 << 20);
    let mut stream = connect(&proxy);
    let request = raw_request(&proxy, "PUT", "big", "", &payload);
    let (most, last) = request.split_at(request.len() - 1);
    stream.write_all(most).expect("the proxy reads the body");
    stream.set_read_timeout(Some(SILENCE)).expect("timeout");
    let error = stream
        .read(&mut [0u8; 1])
        .expect_err("no answer before the whole body is read");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "a read timeout, not {error}"
    );
    stream.write_all(last).expect("the last byte");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let (bytes, end) = read_to_end(&mut stream);
    end.expect("a clean close, not a reset");
    let response = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(status_line(&response), "HTTP/1.1 503 Slow Down");
    assert_eq!(header(&response, "content-type"), Some("application/xml"));
    let length: usize = header(&response, "content-length")
        .expect("Content-Length")
        .parse()
        .expect("a number");
    let xml = body(&response);
    assert_eq!(length, xml.len(), "Content-Length is the body's: {response:?}");
    assert!(xml.contains("<Error><Code>SlowDown</Code><Message>"), "{xml}");
    assert!(
        xml.contains("<RequestId>fault-proxy-1</RequestId></Error>"),
        "{xml}"
    );

    // HEAD: the same head, no body.
    let response = exchange(&proxy, &raw_request(&proxy, "HEAD", "big", "", b""));
    assert_eq!(status_line(&response), "HTTP/1.1 503 Slow Down");
    assert_eq!(
        header(&response, "content-length").map(str::parse::<usize>),
        Some(Ok(length))
    );
    assert_eq!(body(&response), "", "a HEAD answer has no body");

    let response = exchange(&proxy, &raw_request(&proxy, "GET", "big", "", b""));
    assert!(response.starts_with("HTTP/1.1 503 "), "{response:?}");
    assert_eq!(proxy.failed_requests(), 3);

    // The fourth is Garage's again.
    assert_from_garage(&exchange(&proxy, &raw_request(&proxy, "GET", "big", "", b"")));
    assert_eq!(proxy.requests(), 4);
    assert_eq!(proxy.failed_requests(), 3);

    // Another status and code.
    proxy.fail_next(1, 500, "InternalError");
    let response = exchange(&proxy, &raw_request(&proxy, "GET", "big", "", b""));
    assert_eq!(status_line(&response), "HTTP/1.1 500 Internal Server Error");
    assert!(
        body(&response).contains("<Code>InternalError</Code>"),
        "{response:?}"
    );
    assert_eq!(proxy.failed_requests(), 4);
}

#[test]
fn reset_after_cuts_the_next_responses_with_a_reset() {
    let proxy = start_proxy();
    let full = exchange(&proxy, &raw_request(&proxy, "GET", "no-such-key", "", b""));
    assert_from_garage(&full);
    assert!(full.len() > 100, "Garage's 403 is longer than the cut: {full:?}");

    proxy.reset_after(2, 20);
    for _ in 0..2 {
        let mut stream = connect(&proxy);
        stream
            .write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
            .expect("sending");
        let (bytes, end) = read_to_end(&mut stream);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            full[..20],
            "exactly the first 20 bytes arrive"
        );
        let error = end.expect_err("the response is cut by a reset, not a clean close");
        assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
    }

    // The third is whole again.
    assert_from_garage(&exchange(
        &proxy,
        &raw_request(&proxy, "GET", "no-such-key", "", b""),
    ));

    // A cut at 0 bytes: a reset before anything.
    proxy.reset_after(1, 0);
    let mut stream = connect(&proxy);
    stream
        .write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("sending");
    let (bytes, end) = read_to_end(&mut stream);
    assert!(bytes.is_empty(), "{bytes:?}");
    assert_eq!(end.expect_err("a reset").kind(), ErrorKind::ConnectionReset);
    assert_eq!(proxy.requests(), 5);
}

#[test]
fn stall_holds_new_requests_until_turned_off() {
    let proxy = start_proxy();
    proxy.stall(true);
    let mut stream = connect(&proxy);
    stream
        .write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("a stalled proxy still accepts and reads");
    stream.set_read_timeout(Some(SILENCE)).expect("timeout");
    let error = stream.read(&mut [0u8; 1]).expect_err("no answer while stalled");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "a read timeout, not {error}"
    );
    assert_eq!(proxy.requests(), 0, "nothing flows while stalled");

    proxy.stall(false);
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let (bytes, end) = read_to_end(&mut stream);
    end.expect("a clean close");
    assert_from_garage(&String::from_utf8_lossy(&bytes));
    assert_eq!(proxy.requests(), 1);

    // A request whose client gives up during the stall is never forwarded.
    proxy.stall(true);
    let mut gone = connect(&proxy);
    gone.write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("sending");
    drop(gone);
    // Nothing to poll for: the proxy reads the head and then notices the close on its own, and
    // a read silent for SILENCE (above) shows it has long had the time to read a head.
    std::thread::sleep(SILENCE);
    proxy.stall(false);
    assert_from_garage(&exchange(
        &proxy,
        &raw_request(&proxy, "GET", "no-such-key", "", b""),
    ));
    assert_eq!(proxy.requests(), 2, "the abandoned request was not forwarded");
}

#[test]
fn stall_freezes_connections_already_open() {
    let proxy = start_proxy();
    // The latency keeps the request inside the proxy long enough to stall it mid-flight, with
    // room for a loaded machine to be slow to get here.
    proxy.set_latency(Duration::from_secs(2));
    let mut stream = connect(&proxy);
    stream
        .write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("sending");
    wait_until("the proxy has taken the request", || proxy.requests() == 1);
    proxy.stall(true);
    // Unstalled, the answer would come after 2 x 2 s; frozen, nothing comes at all.
    stream
        .set_read_timeout(Some(Duration::from_secs(4) + SILENCE))
        .expect("timeout");
    let error = stream
        .read(&mut [0u8; 1])
        .expect_err("an open connection relays nothing while stalled");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "a read timeout, not {error}"
    );
    proxy.stall(false);
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let (bytes, end) = read_to_end(&mut stream);
    end.expect("a clean close");
    assert_from_garage(&String::from_utf8_lossy(&bytes));
}

#[test]
fn refuse_closes_the_port_and_reopens_it() {
    let proxy = start_proxy();
    let addr = proxy.addr();
    proxy.refuse(true);
    let error = TcpStream::connect(addr).expect_err("connect while refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    // Idempotent.
    proxy.refuse(true);
    let error = TcpStream::connect(addr).expect_err("connect while still refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    assert_eq!(proxy.requests(), 0);

    proxy.refuse(false);
    assert_eq!(proxy.addr(), addr, "the same port");
    assert_from_garage(&exchange(
        &proxy,
        &raw_request(&proxy, "GET", "no-such-key", "", b""),
    ));
    assert_eq!(proxy.requests(), 1);

    // A request taken before the refusal is answered through it (the latency makes the answer
    // come after the listener is closed).
    proxy.set_latency(Duration::from_millis(300));
    let mut open = connect(&proxy);
    open.write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("sending");
    wait_until("the proxy has taken the request", || proxy.requests() == 2);
    proxy.refuse(true);
    let (bytes, end) = read_to_end(&mut open);
    end.expect("a clean close");
    assert_from_garage(&String::from_utf8_lossy(&bytes));
    proxy.refuse(false);
}

#[test]
fn drop_closes_the_listener_and_ends_every_connection() {
    let proxy = start_proxy();
    let addr = proxy.addr();
    proxy.stall(true);
    proxy.set_latency(Duration::from_secs(3600));
    // One connection mid-head, one stalled request: Drop must end both.
    let mut idle = connect(&proxy);
    idle.write_all(b"GET / HTTP/1.1\r\n").expect("half a head");
    let mut stalled = connect(&proxy);
    stalled
        .write_all(&raw_request(&proxy, "GET", "no-such-key", "", b""))
        .expect("sending");

    wait_until("both connections have their thread", || {
        proxy_threads(addr)
            .iter()
            .filter(|name| name.ends_with("-conn"))
            .count()
            == 2
    });
    // Named by now: the acceptor has spawned both connection threads.
    let threads = proxy_threads(addr);
    assert!(
        threads.iter().any(|name| name.ends_with("-acc")),
        "the acceptor runs: {threads:?}"
    );

    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(proxy);
        let _ = done.send(());
    });
    finished
        .recv_timeout(WAIT)
        .expect("Drop returns promptly, with every thread ended");
    for stream in [&mut idle, &mut stalled] {
        let (bytes, end) = read_to_end(stream);
        assert!(bytes.is_empty(), "nothing relayed: {bytes:?}");
        // Closed by the proxy (cleanly or not), not left open until the read timeout.
        if let Err(error) = end {
            assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
        }
    }
    let left = proxy_threads(addr);
    assert!(left.is_empty(), "threads outlive the proxy: {left:?}");
    let error = TcpStream::connect(addr).expect_err("connect after Drop");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
}
