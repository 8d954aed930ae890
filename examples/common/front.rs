//! What the bench's fronts for the S3 server (examples/delay_proxy.rs, examples/tls_front.rs)
//! share: the upstream they take, the endpoint they announce, and how long they run.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};

/// `HOST:PORT`, or an `http://HOST:PORT[/]` endpoint URL.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let host_port = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("UPSTREAM must be HOST:PORT or http://HOST:PORT, not {text:?}"))
}

/// Prints the front's endpoint URL on the first line of stdout, for whoever started it, then
/// returns when that one closes our stdin (or exits, which closes it too).
pub fn announce_and_wait(url: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{url}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot print the endpoint: {e}"))?;
    let mut sink = [0u8; 256];
    while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    Ok(())
}
