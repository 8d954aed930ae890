//! The `-o` parser and the helper protocol, table-driven, plus a property test that no input,
//! however hostile, panics.

use super::*;
use clap::CommandFactory;
use proptest::prelude::*;

fn os(text: &str) -> OsString {
    OsString::from(text)
}

fn options(text: &str) -> Result<Parsed, OptionError> {
    split_options(OsStr::new(text)).map(|list| {
        list.into_iter()
            .map(|o| (o.name, o.value.map(|v| v.to_string_lossy().into_owned())))
            .collect()
    })
}

type Parsed = Vec<(String, Option<String>)>;

fn pair(name: &str, value: Option<&str>) -> (String, Option<String>) {
    (name.to_owned(), value.map(str::to_owned))
}

#[test]
fn option_strings_split_as_mount_writes_them() {
    let table: &[(&str, Parsed)] = &[
        ("", vec![]),
        ("ro", vec![pair("ro", None)]),
        (
            "ro,allow_other",
            vec![pair("ro", None), pair("allow_other", None)],
        ),
        (
            "uid=1000,metadata_ttl=60s",
            vec![pair("uid", Some("1000")), pair("metadata_ttl", Some("60s"))],
        ),
        ("a,,b,", vec![pair("a", None), pair("b", None)]),
        (
            "cache=/var/cache/a\\,b",
            vec![pair("cache", Some("/var/cache/a,b"))],
        ),
        (
            "cache=\"/x,y\",ro",
            vec![pair("cache", Some("/x,y")), pair("ro", None)],
        ),
        ("cache='/x,\"y'", vec![pair("cache", Some("/x,\"y"))]),
        ("prefix=a=b", vec![pair("prefix", Some("a=b"))]),
        (
            "log_level=\"s3mount=debug,warn\"",
            vec![pair("log_level", Some("s3mount=debug,warn"))],
        ),
        ("empty=", vec![pair("empty", Some(""))]),
        ("empty=\"\"", vec![pair("empty", Some(""))]),
        ("back=\\\\", vec![pair("back", Some("\\"))]),
        (
            "comment=systemd.automount",
            vec![pair("comment", Some("systemd.automount"))],
        ),
    ];
    for (text, expected) in table {
        assert_eq!(&options(text).unwrap(), expected, "{text:?}");
    }
    for bad in ["=x", "ro,=x", "\"unclosed", "a='b", "trailing\\", "a b", "\"\""] {
        assert!(options(bad).is_err(), "{bad:?} parsed");
    }
}

fn expand_as(invocation: Invocation, args: &[&str]) -> Result<Expanded, OptionError> {
    let args: Vec<OsString> = args.iter().map(|a| os(a)).collect();
    expand(&args, invocation, &crate::cli::Args::command())
}

fn expanded(invocation: Invocation, args: &[&str]) -> Vec<String> {
    match expand_as(invocation, args) {
        Ok(expanded) => expanded
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        Err(error) => panic!("{args:?}: {error}"),
    }
}

fn error_of(invocation: Invocation, args: &[&str]) -> String {
    match expand_as(invocation, args) {
        Ok(expanded) => panic!("{args:?} expanded to {:?}", expanded.args),
        Err(error) => error.0,
    }
}

#[test]
fn every_long_option_is_a_dash_o_option() {
    assert_eq!(
        expanded(
            Invocation::Command,
            &[
                "s3mount",
                "b",
                "/mnt",
                "-o",
                "allow_other,metadata-ttl=5m,uid=7,force_path_style"
            ]
        ),
        [
            "s3mount",
            "b",
            "/mnt",
            "--allow-other",
            "--metadata-ttl=5m",
            "--uid=7",
            "--force-path-style"
        ]
    );
    assert_eq!(
        expanded(
            Invocation::Command,
            &["s3mount", "-oro", "b", "/mnt", "--foreground"]
        ),
        ["s3mount", "b", "/mnt", "--foreground", "--read-only"]
    );
    // Without -o, arguments are clap's as they are.
    assert_eq!(
        expanded(Invocation::Command, &["s3mount", "b", "/mnt", "--read-only"]),
        ["s3mount", "b", "/mnt", "--read-only"]
    );
}

#[test]
fn generic_mount_options_are_understood_or_ignored() {
    let ignored = "defaults,rw,_netdev,nofail,noauto,auto,user,nouser,users,nosuid,nodev,suid,dev,exec,\
                   x-systemd.automount,x-systemd.idle-timeout=60,comment=systemd.whatever";
    assert_eq!(
        expanded(
            Invocation::Helper,
            &["mount.s3mount", "b:/d", "/mnt", "-o", ignored]
        ),
        ["s3mount", "--", "b:/d", "/mnt"]
    );
    // The last of ro/rw and of exec/noexec wins, as in mount(8).
    assert_eq!(
        expanded(
            Invocation::Helper,
            &["mount.s3mount", "b", "/mnt", "-o", "rw,noexec", "-o", "ro"]
        ),
        ["s3mount", "--read-only", "--no-exec", "--", "b", "/mnt"]
    );
    assert_eq!(
        expanded(
            Invocation::Helper,
            &["mount.s3mount", "b", "/mnt", "-o", "ro,noexec,exec,rw"]
        ),
        ["s3mount", "--", "b", "/mnt"]
    );
    assert!(error_of(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "-o", "ro=1"]).contains("ro"));
    assert!(
        error_of(
            Invocation::Helper,
            &["mount.s3mount", "b", "/mnt", "-o", "nofail=yes"]
        )
        .contains("nofail")
    );
}

#[test]
fn the_helper_takes_mounts_flags_out() {
    assert_eq!(
        expanded(
            Invocation::Helper,
            &[
                "/sbin/mount.s3mount",
                "b:/d",
                "/mnt",
                "-s",
                "-n",
                "-v",
                "-N",
                "/proc/1/ns/mnt",
                "-t",
                "s3mount",
                "-o",
                "uid=1"
            ]
        ),
        ["s3mount", "--uid=1", "--", "b:/d", "/mnt"]
    );
    assert_eq!(
        expanded(
            Invocation::Helper,
            &["mount.s3mount", "-sv", "-tfuse.s3mount", "b", "/mnt"]
        ),
        ["s3mount", "--", "b", "/mnt"]
    );
    let fake = expand_as(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "-f"]).unwrap();
    assert!(fake.fake);
    assert!(
        expand_as(Invocation::Helper, &["mount.s3mount", "-nf", "b", "/mnt"])
            .unwrap()
            .fake
    );
    assert!(
        !expand_as(Invocation::Helper, &["mount.s3mount", "b", "/mnt"])
            .unwrap()
            .fake
    );
    assert!(error_of(Invocation::Helper, &["mount.s3mount", "b"]).contains("usage"));
    assert!(error_of(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "/x"]).contains("usage"));
    assert!(
        error_of(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "--read-only"]).contains("--read-only")
    );
    assert!(error_of(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "-t"]).contains("-t"));
    assert!(error_of(Invocation::Helper, &["mount.s3mount", "b", "/mnt", "-o"]).contains("-o"));
}

#[test]
fn bad_options_are_one_line_errors_naming_them() {
    let cases: &[(&[&str], &str)] = &[
        (&["s3mount", "b", "/m", "-o", "no_such_thing"], "no_such_thing"),
        (&["s3mount", "b", "/m", "-o", "allow_other=yes"], "allow_other"),
        (&["s3mount", "b", "/m", "-o", "uid"], "uid"),
        (&["s3mount", "b", "/m", "-o", "metadata_ttl"], "metadata_ttl"),
        (&["s3mount", "b", "/m", "-o", "options=ro"], "options"),
        (&["mount.s3mount", "b", "/m", "-o", "foreground"], "foreground"),
        (&["mount.s3mount", "b", "/m", "-o", "help"], "help"),
    ];
    for (args, named) in cases {
        let invocation = Invocation::of(Some(OsStr::new(args[0])));
        let error = error_of(invocation, args);
        assert!(error.contains(named), "{args:?}: {error}");
        assert!(!error.contains('\n'), "{args:?}: {error}");
    }
    // foreground is fine where a person typed it.
    assert_eq!(
        expanded(Invocation::Command, &["s3mount", "b", "/m", "-o", "foreground"]),
        ["s3mount", "b", "/m", "--foreground"]
    );
}

#[test]
fn values_that_do_not_parse_fail_in_clap_with_the_option_named() {
    use clap::Parser;
    let args = expanded(
        Invocation::Helper,
        &["mount.s3mount", "b", "/m", "-o", "metadata_ttl=soon"],
    );
    let error = crate::cli::Args::try_parse_from(&args).unwrap_err();
    let line = one_line(&error);
    assert!(line.contains("metadata-ttl") && line.contains("soon"), "{line}");
    assert!(!line.contains('\n'));
    let parsed = crate::cli::Args::try_parse_from(expanded(
        Invocation::Helper,
        &[
            "mount.s3mount",
            "b:/d",
            "/m",
            "-o",
            "ro,uid=1000,metadata_ttl=60s,cache=/var/cache/a\\,b",
        ],
    ))
    .unwrap();
    assert!(parsed.read_only);
    assert_eq!(parsed.uid, Some(1000));
    assert_eq!(parsed.metadata_ttl, std::time::Duration::from_secs(60));
    assert_eq!(
        parsed.cache.as_deref(),
        Some(std::path::Path::new("/var/cache/a,b"))
    );
    assert_eq!(parsed.source, "b:/d");
}

#[test]
fn non_utf8_values_pass_through_and_names_are_checked() {
    let mut text = b"cache=/tmp/".to_vec();
    text.extend_from_slice(&[0xff, 0xfe]);
    let parsed = split_options(OsStr::from_bytes(&text)).unwrap();
    assert_eq!(parsed[0].value.as_ref().unwrap().as_bytes(), b"/tmp/\xff\xfe");
    assert!(split_options(OsStr::from_bytes(b"\xff=1")).is_err());
}

#[test]
fn invocation_is_read_from_argv0() {
    assert_eq!(
        Invocation::of(Some(OsStr::new("/sbin/mount.s3mount"))),
        Invocation::Helper
    );
    assert_eq!(
        Invocation::of(Some(OsStr::new("mount.fuse.s3mount"))),
        Invocation::Helper
    );
    assert_eq!(
        Invocation::of(Some(OsStr::new("/usr/bin/s3mount"))),
        Invocation::Command
    );
    assert_eq!(Invocation::of(None), Invocation::Command);
}

#[test]
fn a_hundred_kib_option_string_is_parsed() {
    let long = format!("cache={}", "a".repeat(100 << 10));
    let parsed = options(&long).unwrap();
    assert_eq!(parsed[0].1.as_ref().unwrap().len(), 100 << 10);
    let many = vec!["ro"; 20_000].join(",");
    assert_eq!(options(&many).unwrap().len(), 20_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes at all: an error or a parse, never a panic; and a parse of names the helper
    /// then expands, also without a panic.
    #[test]
    fn hostile_option_strings_never_panic(bytes in proptest::collection::vec(
        prop_oneof![Just(b','), Just(b'='), Just(b'\\'), Just(b'"'), Just(b'\''), any::<u8>(), Just(b'r'), Just(b'o')],
        0..200,
    )) {
        let text = OsStr::from_bytes(&bytes);
        let _ = split_options(text);
        let args = vec![os("mount.s3mount"), os("b"), os("/m"), os("-o"), text.to_owned()];
        let _ = expand(&args, Invocation::Helper, &crate::cli::Args::command());
    }

    /// What an escaped value says comes back unchanged, whatever it holds.
    #[test]
    fn escaped_values_round_trip(value in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut text = b"cache=".to_vec();
        for byte in &value {
            if matches!(byte, b',' | b'\\' | b'"' | b'\'' | b'=') {
                text.push(b'\\');
            }
            text.push(*byte);
        }
        text.extend_from_slice(b",ro");
        let parsed = split_options(OsStr::from_bytes(&text)).unwrap();
        prop_assert_eq!(parsed.len(), 2);
        prop_assert_eq!(parsed[0].value.as_ref().unwrap().as_bytes(), &value[..]);
    }
}
