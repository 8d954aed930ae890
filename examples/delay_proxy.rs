//! `delay_proxy UPSTREAM LATENCY_MS`: S3 as far away as real S3 is, for `scripts/bench
//! --latency-ms`. It puts the fault tests' proxy (tests/common/fault_proxy.rs, the same code)
//! between a client and the loopback server at UPSTREAM (`127.0.0.1:3900` or
//! `http://127.0.0.1:3900`), adding LATENCY_MS before each request is forwarded and again before
//! its response is relayed: one round trip costs 2 x LATENCY_MS, as each request in flight pays
//! its own delay. It prints its endpoint URL on the first line of stdout and runs until stdin
//! closes (the bench holds it open) or it is signalled.

#[path = "../tests/common/fault_proxy.rs"]
mod fault_proxy;
#[path = "common/front.rs"]
mod front;

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
    let upstream = front::parse_upstream(upstream)?;
    let latency_ms: u64 = latency_ms
        .parse()
        .map_err(|_| format!("LATENCY_MS must be a whole number of milliseconds, not {latency_ms:?}"))?;
    let proxy = fault_proxy::FaultProxy::start(upstream).map_err(|e| format!("cannot start: {e}"))?;
    proxy.set_latency(Duration::from_millis(latency_ms));
    front::announce_and_wait(&proxy.url())?;
    drop(proxy);
    Ok(())
}
