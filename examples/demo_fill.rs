//! Fills a bucket with a small demo tree (text files, nested prefixes, a few MiB-sized binary
//! shards) through the crate's own S3 client, for `scripts/demo`.
//!
//! Usage: `cargo run --release --example demo_fill -- BUCKET`, with credentials and the endpoint in
//! the usual `AWS_*` variables (`. target/s3-server/env`). Path-style addressing is forced, as
//! loopback servers have no per-bucket DNS names.

use anyhow::{Context, bail};
use bytes::Bytes;
use s3mount::object::s3::{S3Client, S3Settings};
use s3mount::object::{ObjectClient, ObjectMetadata, PutOptions};

/// Size of each dataset shard: big enough that reading one takes several ranged GETs.
const SHARD_BYTES: usize = 4 * 1024 * 1024;
const SHARDS: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(bucket), None) = (args.next(), args.next()) else {
        bail!("usage: demo_fill BUCKET   (endpoint and credentials from the AWS_* variables)");
    };
    let client = S3Client::new(S3Settings {
        bucket: bucket.clone(),
        region: std::env::var("AWS_REGION").ok(),
        endpoint_url: std::env::var("AWS_ENDPOINT_URL").ok(),
        force_path_style: true,
        profile: None,
        no_sign_request: false,
        request_timeout: None,
        sdk_gets: false,
    })
    .await
    .context("building the S3 client")?;

    let mut objects: Vec<(String, Bytes)> = vec![
        (
            "README.txt".into(),
            Bytes::from_static(
                b"This bucket is mounted by s3mount.\n\
                  Prefixes are directories; objects are files; x-amz-meta-* is in user.* xattrs:\n\
                  try `getfattr -d -m - README.txt images/cat.json`.\n",
            ),
        ),
        (
            "2021/doc-example-bucket/math/john.txt".into(),
            Bytes::from_static(b"John: 3 + 4 = 7\n"),
        ),
        (
            "2021/doc-example-bucket/math/jane.txt".into(),
            Bytes::from_static(b"Jane: 6 * 7 = 42\n"),
        ),
        (
            "2021/doc-example-bucket/art/notes.md".into(),
            Bytes::from_static(b"# Art\n\nSketches.\n"),
        ),
        (
            "images/cat.json".into(),
            Bytes::from_static(br#"{"name": "cat", "width": 640, "height": 480, "label": "tabby"}"#),
        ),
        (
            "images/dog.json".into(),
            Bytes::from_static(br#"{"name": "dog", "width": 800, "height": 600, "label": "corgi"}"#),
        ),
    ];
    for shard in 0..SHARDS {
        objects.push((
            format!("datasets/shard-{shard:04}.bin"),
            pseudo_random(shard as u64, SHARD_BYTES),
        ));
    }

    for (key, body) in objects {
        let len = body.len();
        client
            .put_with(&key, body, &demo_metadata(&key))
            .await
            .with_context(|| format!("uploading s3://{bucket}/{key}"))?;
        println!("{len:>9}  s3://{bucket}/{key}");
    }
    Ok(())
}

/// Deterministic incompressible bytes (splitmix64), so the demo needs no random-number crate and
/// every run writes the same shards.
fn pseudo_random(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A content type for every object and a little user metadata on some, so that `getfattr` has
/// something to show.
fn demo_metadata(key: &str) -> PutOptions {
    let content_type = match key.rsplit_once('.').map(|(_, extension)| extension) {
        Some("txt") => "text/plain",
        Some("md") => "text/markdown",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let mut metadata = ObjectMetadata::with_content_type(Some(content_type.to_owned()));
    if key == "README.txt" {
        metadata.user.insert("purpose".into(), "demo".into());
    }
    if let Some(name) = key.strip_prefix("images/") {
        metadata.user.insert("source".into(), "camera-7".into());
        metadata.user.insert("label-file".into(), name.into());
    }
    PutOptions {
        metadata,
        ..PutOptions::default()
    }
}
