//! `delay_proxy UPSTREAM LATENCY_MS`: S3 as far away as real S3 is, for `scripts/bench
//! --latency-ms`. It puts the fault tests' proxy (tests/common/fault_proxy.rs, the same code)
//! between a client and the loopback server at UPSTREAM (`127.0.0.1:3900` or
//! `http://127.0.0.1:3900`), adding LATENCY_MS before each request is forwarded and again before
//! its response is relayed: one round trip costs 2 x LATENCY_MS, as each request in flight pays
//! its own delay. It prints its endpoint URL on the first line of stdout and runs until stdin
//! closes (the bench holds it open) or it is signalled.

#[path = "../tests/common/fault_proxy.rs"]
mod fault_proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

fn main() {
    if let Err(message) = run() {
        eprintln!("delay_proxy: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, latency_ms] = args.as_slice() else {
        return Err("usage: delay_proxy UPSTREAM LATENCY_MS".to_owned());
    };
    let upstream = parse_upstream(upstream)?;
    let latency_ms: u64 = latency_ms
        .parse()
        .map_err(|_| format!("LATENCY_MS must be a whole number of milliseconds, not {latency_ms:?}"))?;
    let proxy = fault_proxy::FaultProxy::start(upstream).map_err(|e| format!("cannot start: {e}"))?;
    proxy.set_latency(Duration::from_millis(latency_ms));
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", proxy.url())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot print the endpoint: {e}"))?;
    // Runs until whoever started it closes our stdin (or exits, which closes it too).
    let mut sink = [0u8; 256];
    while std::io::stdin().read(&mut sink).is_ok_and(|n| n > 0) {}
    drop(proxy);
    Ok(())
}

/// `HOST:PORT`, or an `http://HOST:PORT[/]` endpoint URL.
fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let host_port = text.strip_prefix("http://").unwrap_or(text).trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("UPSTREAM must be HOST:PORT or http://HOST:PORT, not {text:?}"))
}
