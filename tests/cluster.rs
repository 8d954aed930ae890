//! One node of a three-node Garage cluster goes down, and `S3Client` and a mount of the real
//! binary keep working against the others: put, get, list, head and a two-part multipart upload
//! all succeed while node 2 is stopped, and so do `ls`, reads, writes and closes (small and
//! multipart) through the mount; what was written meanwhile reads back through node 2 once it
//! is back.
//!
//! The cluster is the one `scripts/s3-server cluster start` runs on loopback (replication factor
//! 3, so every request needs 2 of the 3 copies). Its settings are read from
//! `target/s3-cluster/env`, never from the environment, which holds the single server's. The test
//! starts the cluster when it is not running and then stops it at the end, as `scripts/test`
//! does with the single server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use s3mount::object::s3::{S3Client, S3Settings};
use s3mount::object::{CompletedPart, ListRequest, ObjectClient, PutOptions};

/// The node stopped during the test: not node 1, whose endpoint is `AWS_ENDPOINT_URL`, so that
/// the client talks to a surviving node that must reach the dead one's copies.
const DOWN_NODE: &str = "2";

/// S3's smallest non-last part, and a last part of one byte.
const PART: usize = 5 << 20;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/s3-server cluster ARGS...`; panics with its output when it fails.
fn cluster(args: &[&str]) {
    let script: PathBuf = root().join("scripts/s3-server");
    let output = Command::new(&script)
        .arg("cluster")
        .args(args)
        .output()
        .expect("running scripts/s3-server");
    assert!(
        output.status.success(),
        "scripts/s3-server cluster {} failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn cluster_is_running() -> bool {
    Command::new(root().join("scripts/s3-server"))
        .args(["cluster", "status"])
        .output()
        .expect("running scripts/s3-server")
        .status
        .success()
}

/// Stops the whole cluster when dropped, if this test started it.
struct StartedCluster {
    started_here: bool,
}

impl Drop for StartedCluster {
    fn drop(&mut self) {
        if self.started_here {
            cluster(&["stop"]);
        }
    }
}

/// A stopped node, started again when dropped (also when an assertion failed meanwhile).
struct NodeDown(&'static str);

impl NodeDown {
    fn stop(node: &'static str) -> Self {
        cluster(&["stop-node", node]);
        NodeDown(node)
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        cluster(&["start-node", self.0]);
    }
}

async fn client(endpoint: &str, bucket: &str, region: &str) -> S3Client {
    S3Client::new(S3Settings {
        bucket: bucket.to_owned(),
        region: Some(region.to_owned()),
        endpoint_url: Some(endpoint.to_owned()),
        force_path_style: true,
        ..Default::default()
    })
    .await
    .expect("S3 client")
}

#[test]
fn s3_requests_succeed_with_one_node_of_three_down() {
    let begun = Instant::now();
    let _cluster = StartedCluster {
        started_here: !cluster_is_running(),
    };
    cluster(&["start"]);
    let env_path = root().join("target/s3-cluster/env");
    let env = common::parse_env_file(&std::fs::read_to_string(&env_path).expect("reading the cluster env"));
    let get = |name: &str| -> String {
        env.get(name)
            .filter(|value| !value.is_empty())
            .unwrap_or_else(|| panic!("{name} missing from {}", env_path.display()))
            .clone()
    };
    let nodes: Vec<String> = get("S3MOUNT_CLUSTER_NODE_ENDPOINTS")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(nodes.len(), 3, "three node endpoints: {nodes:?}");
    assert_eq!(nodes[0], get("AWS_ENDPOINT_URL"), "AWS_ENDPOINT_URL is node 1");
    // The SDK takes its credentials from the provider chain, whose first link is these two
    // variables; the environment may hold the single server's key, which the cluster lacks.
    //
    // SAFETY: this is the only test of this binary and no thread, runtime or child process of
    // ours exists yet, so nothing reads the environment meanwhile (libtest's own reads go through
    // `std::env`, which takes the same lock as `set_var`).
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", get("AWS_ACCESS_KEY_ID"));
        std::env::set_var("AWS_SECRET_ACCESS_KEY", get("AWS_SECRET_ACCESS_KEY"));
    }
    let (bucket, region) = (get("S3MOUNT_TEST_BUCKET"), get("AWS_REGION"));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("cluster-test/{}-{nanos}/", std::process::id());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let node1 = runtime.block_on(client(&nodes[0], &bucket, &region));
    let before = Bytes::from_static(b"written with all three nodes up");
    let before_key = format!("{prefix}before");
    runtime
        .block_on(node1.put(&before_key, before.clone()))
        .expect("put with all nodes up");
    eprintln!("cluster up and first object written after {:?}", begun.elapsed());
    // A mount of the prefix through node 1, made while every node is up.
    let mount_prefix = format!("{prefix}mounted/");
    runtime
        .block_on(node1.put(&format!("{mount_prefix}before.txt"), before.clone()))
        .expect("put with all nodes up");
    let source = format!("s3://{bucket}/{mount_prefix}");
    let mount_extra = ["--endpoint-url", nodes[0].as_str()];
    let mut mount = common::Mount::start_with(&[&source], &mount_extra, |command| {
        command
            .env("AWS_ACCESS_KEY_ID", get("AWS_ACCESS_KEY_ID"))
            .env("AWS_SECRET_ACCESS_KEY", get("AWS_SECRET_ACCESS_KEY"))
            .env("AWS_REGION", &region)
            .env("AWS_ENDPOINT_URL", &nodes[0]);
    });

    let small_key = format!("{prefix}small");
    let big_key = format!("{prefix}big");
    let small = Bytes::from_static(b"written while node 2 is down");
    // Not all one byte: a part mixed up with another would not compare equal.
    let big: Vec<u8> = (0..PART + 1).map(|i| (i % 251) as u8).collect();
    {
        let _down = NodeDown::stop(DOWN_NODE);
        eprintln!("node {DOWN_NODE} down after {:?}", begun.elapsed());
        runtime.block_on(async {
            let etag = node1
                .put(&small_key, small.clone())
                .await
                .expect("put with a node down");
            let read = node1.get_range(&small_key, 0..u64::MAX, None).await.expect("get");
            assert_eq!(read, small);
            let read = node1
                .get_range(&before_key, 0..u64::MAX, None)
                .await
                .expect("get older");
            assert_eq!(read, before, "an object written before the node went down");
            let head = node1.head(&small_key).await.expect("head with a node down");
            assert_eq!(
                (head.size, head.etag.as_str()),
                (small.len() as u64, etag.as_str())
            );

            let upload = node1
                .create_multipart(&big_key, &PutOptions::default())
                .await
                .expect("create multipart with a node down");
            let mut parts = Vec::new();
            for (number, body) in [(1, &big[..PART]), (2, &big[PART..])] {
                let etag = node1
                    .upload_part(&big_key, &upload, number, Bytes::copy_from_slice(body))
                    .await
                    .expect("upload part with a node down");
                parts.push(CompletedPart {
                    part_number: number,
                    etag,
                });
            }
            node1
                .complete_multipart(&big_key, &upload, &parts, None, false)
                .await
                .expect("complete multipart with a node down");
            let head = node1.head(&big_key).await.expect("head of the multipart object");
            assert_eq!(head.size, big.len() as u64);
            let tail = node1
                .get_range(&big_key, PART as u64 - 3..u64::MAX, None)
                .await
                .expect("ranged get across the part boundary");
            assert_eq!(&tail[..], &big[PART - 3..]);

            let page = node1
                .list(&ListRequest {
                    prefix: prefix.clone(),
                    delimiter: Some("/".to_owned()),
                    ..Default::default()
                })
                .await
                .expect("list with a node down");
            let mut keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
            keys.sort_unstable();
            assert_eq!(keys, [before_key.as_str(), big_key.as_str(), small_key.as_str()]);
        });
        eprintln!(
            "requests with node {DOWN_NODE} down done after {:?}",
            begun.elapsed()
        );
        check_the_mount_with_a_node_down(&mount, &before, &big);
        mount.unmount_and_wait_for_exit();
        eprintln!(
            "mount checked with node {DOWN_NODE} down after {:?}",
            begun.elapsed()
        );
    }

    // Node 2 is back (the guard waited for a healthy cluster): what was written while it was
    // down reads back through it.
    let node2 = runtime.block_on(client(&nodes[1], &bucket, &region));
    runtime.block_on(async {
        let read = node2
            .get_range(&small_key, 0..u64::MAX, None)
            .await
            .expect("get via node 2");
        assert_eq!(read, small);
        let read = node2
            .get_range(&format!("{mount_prefix}large.bin"), 0..u64::MAX, None)
            .await
            .expect("get via node 2 of a file closed on the mount");
        assert!(
            read[..] == big.repeat(2)[..],
            "the mount's multipart upload read through node 2"
        );
        for name in ["before.txt", "small.txt", "large.bin"] {
            node2
                .delete(&format!("{mount_prefix}{name}"))
                .await
                .expect("delete");
        }
        let read = node2
            .get_range(&big_key, 0..u64::MAX, None)
            .await
            .expect("get via node 2");
        assert!(read[..] == big[..], "the multipart object read through node 2");
        for key in [&before_key, &small_key, &big_key] {
            node2.delete(key).await.expect("delete");
        }
    });
    eprintln!("node {DOWN_NODE} back and checked after {:?}", begun.elapsed());
}

/// Through the mount, with a node down: a listing, a read of what was there, and a small and a
/// multipart file written and closed (each close checked: it is where the upload happens).
fn check_the_mount_with_a_node_down(mount: &common::Mount, before: &[u8], big: &[u8]) {
    use std::io::Write;
    let close = |file: std::fs::File| common::close(file).expect("close (the upload)");
    assert_eq!(common::names(mount.path()), vec!["before.txt".to_owned()]);
    assert_eq!(
        std::fs::read(mount.join("before.txt")).expect("read with a node down"),
        before
    );
    let mut small = std::fs::File::create(mount.join("small.txt")).expect("create with a node down");
    small.write_all(b"closed with a node down").unwrap();
    close(small);
    let large_body = big.repeat(2);
    let mut large = std::fs::File::create(mount.join("large.bin")).unwrap();
    large.write_all(&large_body).expect("write with a node down");
    close(large);
    let names = common::names(mount.path());
    assert_eq!(
        names,
        vec!["before.txt".to_owned(), "large.bin".into(), "small.txt".into()]
    );
    assert!(
        std::fs::read(mount.join("large.bin")).unwrap() == large_body,
        "read back"
    );
}
