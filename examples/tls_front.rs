//! `tls_front UPSTREAM CERT_OUT`: https in front of the loopback S3 server, for `scripts/bench
//! --https`, as real S3 is reached over TLS, and decrypting every byte is a cost the mount and
//! the raw-SDK baseline both pay.
//!
//! It makes a self-signed certificate for `localhost` and `127.0.0.1`, writes it (PEM) to
//! CERT_OUT for the clients to trust (the bench puts it in the bundle `SSL_CERT_FILE` names),
//! and relays every TLS connection it accepts, decrypted, to a plain TCP connection of its own to
//! UPSTREAM (`127.0.0.1:3900` or `http://127.0.0.1:3900`): Garage, or the delay proxy. It knows
//! nothing of HTTP, so a client's kept-alive connection stays one connection upstream too. It
//! prints its endpoint URL (`https://localhost:PORT`) on the first line of stdout and runs until
//! stdin closes (the bench holds it open) or it is signalled.

#[path = "common/front.rs"]
mod front;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// The most bytes relayed per write, each way.
const RELAY_CHUNK: usize = 64 << 10;

fn main() {
    if let Err(message) = run() {
        eprintln!("tls_front: {message}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, cert_out] = args.as_slice() else {
        return Err("usage: tls_front UPSTREAM CERT_OUT".to_owned());
    };
    let upstream = front::parse_upstream(upstream)?;
    let (acceptor, certificate_pem) = self_signed_acceptor()?;
    std::fs::write(cert_out, certificate_pem).map_err(|e| format!("cannot write {cert_out}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("cannot listen: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    runtime.spawn(serve(listener, acceptor, upstream));
    front::announce_and_wait(&format!("https://localhost:{port}"))?;
    runtime.shutdown_background();
    Ok(())
}

/// A TLS server config (aws-lc-rs, TLS 1.2 and 1.3, as the clients have) with a new self-signed
/// certificate, and that certificate in PEM.
fn self_signed_acceptor() -> Result<(TlsAcceptor, String), String> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
        })
        .map_err(|e| format!("TLS configuration: {e}"))?;
    Ok((TlsAcceptor::from(Arc::new(config)), certified.cert.pem()))
}

/// Accepts connections for as long as the process runs, each relayed on its own task.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, upstream: SocketAddr) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // (Out of descriptors, say: not a reason to spin.)
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match relay(client, acceptor, upstream).await {
                // (Clients close kept connections without a TLS close_notify, as HTTP allows,
                // and reset those they give up on.)
                Err(error)
                    if !matches!(
                        error.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    eprintln!("tls_front: a connection ended with {error}");
                }
                _ => {}
            }
        });
    }
}

/// One client connection: the TLS handshake, then bytes both ways until either side closes.
async fn relay(client: TcpStream, acceptor: TlsAcceptor, upstream: SocketAddr) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut client = acceptor.accept(client).await?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    // 64 KiB per write, so that the records sent are full ones (16 KiB), as S3's are: rustls
    // makes a record of each write, and the default 8 KiB would double the clients' per-record
    // costs.
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, RELAY_CHUNK, RELAY_CHUNK).await?;
    Ok(())
}
