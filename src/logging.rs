//! Where logs go: stderr in the foreground, a file when asked, syslog for a background daemon
//! (whose stderr is gone). Owns the tracing subscriber set-up and nothing else.

use std::ffi::CString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Debug)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
    Syslog,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid --log-level {0:?}: {1}")]
    BadFilter(String, String),
    #[error("cannot open log file {0}: {1}")]
    File(PathBuf, io::Error),
}

/// Checks a `--log-level` value. A plain level applies to s3mount; the libraries under it log at
/// `warn` so `debug` shows our requests, not every HTTP frame. Anything else is an EnvFilter.
/// fuser's session warns when its own unmount-on-exit finds the mount already gone (after every
/// `umount`), which is noise: only its errors pass.
pub fn filter(level: &str) -> Result<EnvFilter, LogError> {
    let directives = match level.parse::<Level>() {
        Ok(level) => format!("warn,fuser::session=error,s3mount={level}"),
        Err(_) => level.to_owned(),
    };
    EnvFilter::try_new(&directives).map_err(|e| LogError::BadFilter(level.to_owned(), e.to_string()))
}

/// Installs the global subscriber. Call once, after any fork.
pub fn init(filter: EnvFilter, target: &LogTarget) -> Result<(), LogError> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match target {
        LogTarget::Stderr => builder.with_writer(io::stderr).init(),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| LogError::File(path.clone(), e))?;
            builder.with_ansi(false).with_writer(Mutex::new(file)).init();
        }
        LogTarget::Syslog => {
            // SAFETY: the identity is a static NUL-terminated string, as openlog requires.
            unsafe { libc::openlog(c"s3mount".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
            builder.with_ansi(false).without_time().with_writer(Syslog).init();
        }
    }
    Ok(())
}

/// Writes each formatted event as one syslog message at the event's level.
struct Syslog;

struct SyslogLine {
    priority: libc::c_int,
    buffer: Vec<u8>,
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buffer: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            Level::ERROR => libc::LOG_ERR,
            Level::WARN => libc::LOG_WARNING,
            Level::INFO => libc::LOG_INFO,
            Level::DEBUG | Level::TRACE => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buffer: Vec::new(),
        }
    }
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self
            .buffer
            .iter()
            .copied()
            .filter(|&b| b != 0 && b != b'\n')
            .collect();
        if let Ok(message) = CString::new(text) {
            // SAFETY: both format and argument are valid NUL-terminated strings; "%s" keeps the
            // message from being read as a format.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), message.as_ptr()) };
        }
    }
}
