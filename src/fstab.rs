//! mount(8)'s side of s3mount: `-o` option strings, and the `mount.s3mount` helper protocol.
//!
//! Every long option of the command line is also a `-o` option (`metadata_ttl=60s` is
//! `--metadata-ttl=60s`; `_` and `-` alike), so one fstab line, one `mount -t` command and one
//! systemd unit can say everything the command line can. This module turns an argument list
//! holding `-o` strings (and, in helper mode, mount(8)'s own flags) into the plain long-option
//! list clap parses; clap then checks the values as it does for the command line. It owns the
//! option-string syntax and the table of generic mount options, and nothing else.
//!
//! Syntax: options are separated by commas; a comma inside a value is escaped (`\,`) or the
//! value (or part of it) is quoted with `"` or `'`; a backslash escapes any character. Errors
//! name the option and never panic, whatever the bytes.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use clap::{ArgAction, Command};

/// The names the binary answers to as mount(8)'s helper (`mount -t s3mount` runs
/// `/sbin/mount.s3mount`; `mount.fuse.s3mount` is what `-t fuse.s3mount` would look for first).
const HELPER_NAMES: [&str; 2] = ["mount.s3mount", "mount.fuse.s3mount"];

/// Generic mount options that mean nothing to a FUSE mount of S3, or that s3mount already
/// applies (it always mounts `nosuid,nodev,noatime`): accepted and ignored, as mount(8)
/// passes them to helpers. `x-*` and `comment=` are matched apart.
const IGNORED: [&str; 18] = [
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "nosuid",
    "nodev",
    "suid",
    "dev",
    "async",
    "noatime",
    "relatime",
    "nodiratime",
];

/// Long options that only make sense typed by a person at a terminal, refused in helper mode:
/// mount(8) and systemd wait for the helper to exit, so a helper in the foreground never would.
const COMMAND_LINE_ONLY: [&str; 3] = ["foreground", "help", "version"];

/// Long options that are not `-o` options: `-o` itself.
const NOT_OPTIONS: [&str; 1] = ["options"];

/// Why an argument list cannot be used; one line, naming the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, OptionError> {
    Err(OptionError(message.into()))
}

/// One `-o` option as written: a name, and a value after `=` if there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOption {
    pub name: String,
    pub value: Option<OsString>,
}

/// Splits an option string at unescaped, unquoted commas; `name=value` at the first unquoted
/// `=`. Empty items (`a,,b`, a trailing comma) are skipped, as mount(8) does.
pub fn split_options(text: &OsStr) -> Result<Vec<MountOption>, OptionError> {
    let mut options = Vec::new();
    for item in split_items(text.as_bytes())? {
        let Some(item) = item else { continue };
        options.push(item.into_option()?);
    }
    Ok(options)
}

/// One item being read: its name bytes, and its value bytes once an `=` was met.
#[derive(Default)]
struct RawItem {
    name: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl RawItem {
    fn push(&mut self, byte: u8) {
        match &mut self.value {
            Some(value) => value.push(byte),
            None => self.name.push(byte),
        }
    }

    fn into_option(self) -> Result<MountOption, OptionError> {
        let name = String::from_utf8(self.name)
            .ok()
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                let shown = String::from_utf8_lossy(self.value.as_deref().unwrap_or_default());
                OptionError(format!("invalid option name before value {shown:?}"))
            })?;
        Ok(MountOption {
            name,
            value: self.value.map(OsString::from_vec),
        })
    }
}

/// The byte-level scanner of [`split_options`]: `None` for an empty item.
fn split_items(bytes: &[u8]) -> Result<Vec<Option<RawItem>>, OptionError> {
    let mut items = Vec::new();
    let mut current = RawItem::default();
    let mut quote: Option<u8> = None;
    let mut started = false;
    let mut bytes = bytes.iter().copied();
    while let Some(byte) = bytes.next() {
        match (quote, byte) {
            (_, b'\\') => match bytes.next() {
                Some(escaped) => current.push(escaped),
                None => return fail("option string ends in a lone backslash"),
            },
            (Some(open), _) if byte == open => quote = None,
            (Some(_), _) => current.push(byte),
            (None, b'"' | b'\'') => quote = Some(byte),
            (None, b',') => {
                let item = std::mem::take(&mut current);
                items.push(std::mem::take(&mut started).then_some(item));
                continue;
            }
            (None, b'=') if current.value.is_none() => current.value = Some(Vec::new()),
            (None, _) => current.push(byte),
        }
        started = true;
    }
    if let Some(open) = quote {
        return fail(format!("unclosed {} quote in the option string", open as char));
    }
    items.push(started.then_some(current));
    Ok(items)
}

/// How the binary was invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// `s3mount ...` typed by a person (or run by mount.fuse3 or a unit).
    Command,
    /// `mount.s3mount SOURCE DIR [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`, run by mount(8).
    Helper,
}

impl Invocation {
    /// Helper mode when `argv[0]`'s file name is one of the helper names.
    pub fn of(argv0: Option<&OsStr>) -> Self {
        let name = argv0
            .map(std::path::Path::new)
            .and_then(std::path::Path::file_name)
            .and_then(OsStr::to_str);
        match name {
            Some(name) if HELPER_NAMES.contains(&name) => Invocation::Helper,
            _ => Invocation::Command,
        }
    }
}

/// The argument list clap should parse, with every `-o` expanded into long options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub args: Vec<OsString>,
    /// mount(8)'s `-f` ("fake"): check everything, mount nothing.
    pub fake: bool,
}

/// Expands `-o OPTS` / `-oOPTS` / `--options OPTS` (anywhere in the list) into long options of
/// `command`; in helper mode also takes mount(8)'s flags out. `args[0]` is the program name.
pub fn expand(args: &[OsString], invocation: Invocation, command: &Command) -> Result<Expanded, OptionError> {
    let table = OptionTable::of(command);
    let mut out: Vec<OsString> = vec![OsString::from("s3mount")];
    let mut positionals = Vec::new();
    let mut state = GenericState::default();
    let mut fake = false;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        let bytes = arg.as_bytes();
        let option_string = if bytes == b"-o" || bytes == b"--options" {
            Some(
                rest.next()
                    .ok_or_else(|| OptionError(format!("{} needs an option string", arg.display())))?
                    .clone(),
            )
        } else {
            bytes
                .strip_prefix(b"-o")
                .map(|inline| OsString::from_vec(inline.to_vec()))
        };
        if let Some(text) = option_string {
            for option in split_options(&text)? {
                table.translate(option, invocation, &mut state, &mut out)?;
            }
            continue;
        }
        if invocation == Invocation::Helper {
            match helper_flag(bytes) {
                Some(HelperFlag::Ignored) => continue,
                Some(HelperFlag::Fake) => {
                    fake = true;
                    continue;
                }
                Some(HelperFlag::TakesValue) => {
                    rest.next()
                        .ok_or_else(|| OptionError(format!("{} needs a value", arg.display())))?;
                    continue;
                }
                None if bytes.starts_with(b"-") && bytes.len() > 1 => {
                    return fail(format!(
                        "mount.s3mount: unknown flag {}; use -o for s3mount's options",
                        arg.display()
                    ));
                }
                None => {
                    positionals.push(arg.clone());
                    continue;
                }
            }
        }
        out.push(arg.clone());
    }
    state.finish(&table, &mut out);
    if invocation == Invocation::Helper {
        if positionals.len() != 2 {
            return fail("usage: mount.s3mount SOURCE DIR [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]");
        }
        out.push(OsString::from("--"));
        out.extend(positionals);
    }
    Ok(Expanded { args: out, fake })
}

enum HelperFlag {
    /// `-s` (sloppy), `-n` (no mtab), `-v` (verbose), `-f`'s company, or a group of them.
    Ignored,
    /// `-f`, alone or in a group: fake.
    Fake,
    /// `-t TYPE`, `-N NAMESPACE`: the flag and the argument after it.
    TakesValue,
}

/// mount(8)'s flags to a helper, alone or grouped (`-sv`).
fn helper_flag(arg: &[u8]) -> Option<HelperFlag> {
    let letters = arg.strip_prefix(b"-")?;
    match letters {
        b"t" | b"N" => Some(HelperFlag::TakesValue),
        _ if letters.starts_with(b"t") || letters.starts_with(b"N") => Some(HelperFlag::Ignored),
        _ if !letters.is_empty() && letters.iter().all(|l| b"sfnv".contains(l)) => {
            Some(if letters.contains(&b'f') {
                HelperFlag::Fake
            } else {
                HelperFlag::Ignored
            })
        }
        _ => None,
    }
}

/// The generic options whose last word wins (`ro` then `rw` is read-write), applied once at
/// the end so that the order of `-o` strings is the order mount(8) gives them.
#[derive(Default)]
struct GenericState {
    read_only: Option<bool>,
    no_exec: Option<bool>,
}

impl GenericState {
    /// Records `ro`/`rw`/`exec`/`noexec`; false for any other name.
    fn apply(&mut self, name: &str) -> bool {
        let (setting, on) = match name {
            "ro" => (&mut self.read_only, true),
            "rw" => (&mut self.read_only, false),
            "noexec" => (&mut self.no_exec, true),
            "exec" => (&mut self.no_exec, false),
            _ => return false,
        };
        *setting = Some(on);
        true
    }

    fn finish(self, table: &OptionTable, out: &mut Vec<OsString>) {
        if self.read_only == Some(true) && table.kinds.contains_key("read-only") {
            out.push(OsString::from("--read-only"));
        }
        if self.no_exec == Some(true) && table.kinds.contains_key("no-exec") {
            out.push(OsString::from("--no-exec"));
        }
    }
}

/// Whether a long option is a flag or takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flag,
    Value,
}

/// The long options of the command, by name.
struct OptionTable {
    kinds: HashMap<String, Kind>,
}

impl OptionTable {
    fn of(command: &Command) -> Self {
        let kinds = command
            .get_arguments()
            .filter_map(|arg| {
                let kind = match arg.get_action() {
                    ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count => Kind::Flag,
                    ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version => {
                        Kind::Flag
                    }
                    _ => Kind::Value,
                };
                let long = arg.get_long().filter(|long| !NOT_OPTIONS.contains(long))?;
                Some((long.to_owned(), kind))
            })
            .chain([
                ("help".to_owned(), Kind::Flag),
                ("version".to_owned(), Kind::Flag),
            ])
            .collect();
        Self { kinds }
    }

    /// Appends the long option `option` stands for (or records a generic one).
    fn translate(
        &self,
        option: MountOption,
        invocation: Invocation,
        state: &mut GenericState,
        out: &mut Vec<OsString>,
    ) -> Result<(), OptionError> {
        let MountOption { name, value } = option;
        let shown = match &value {
            Some(value) => format!("{name}={}", value.to_string_lossy()),
            None => name.clone(),
        };
        if name.starts_with("x-") || name == "comment" {
            return Ok(());
        }
        if state.apply(&name) || IGNORED.contains(&name.as_str()) {
            if value.is_some() {
                return fail(format!("option {name} takes no value (got {:?})", shown));
            }
            return Ok(());
        }
        let long = name.replace('_', "-");
        let Some(&kind) = self.kinds.get(&long) else {
            return fail(format!(
                "unknown option {:?} (see s3mount --help; every --long-option is a -o option)",
                shown
            ));
        };
        if invocation == Invocation::Helper && COMMAND_LINE_ONLY.contains(&long.as_str()) {
            return fail(format!("option {name} cannot be used from mount(8) or fstab"));
        }
        match (kind, value) {
            (Kind::Flag, None) => out.push(OsString::from(format!("--{long}"))),
            (Kind::Flag, Some(_)) => return fail(format!("option {name} takes no value (got {:?})", shown)),
            (Kind::Value, None) => return fail(format!("option {name} needs a value: {name}=...")),
            (Kind::Value, Some(value)) => {
                let mut arg = OsString::from(format!("--{long}="));
                arg.push(value);
                out.push(arg);
            }
        }
        Ok(())
    }
}

/// clap's error for an argument list that came (maybe) from `-o`: its first line, without
/// clap's `error: ` prefix and usage, so mount(8) shows one line naming the option.
pub fn one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("invalid arguments");
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests;
