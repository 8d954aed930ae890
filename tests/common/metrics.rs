//! A Prometheus client for the mount tests: scrapes a daemon's `--metrics-addr` endpoint over
//! plain HTTP/1.0 and sums the samples of a metric by label, so a test can check that a counter
//! moved by what it did (see tests/operations_mount.rs, tests/read_path.rs).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::{Mount, WAIT};

const POLL: Duration = Duration::from_millis(50);

/// A port nobody listens on now (a small race with other processes is accepted).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// One sample of the text exposition format: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One scrape of the metrics endpoint.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("unparsable metrics line {line:?}")))
            .collect();
        Self { samples }
    }

    /// The sum of every series of `name` whose labels include all of `labels` (0 when none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The lines of `name`, for failure messages.
    pub fn show(&self, name: &str) -> String {
        let lines: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect();
        if lines.is_empty() {
            format!("{name}: (absent)")
        } else {
            lines.join("\n")
        }
    }
}

pub fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// `a="x",b="y\"z"} rest` -> the labels and `rest`.
pub fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after_key.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = &after_key[end + 1..];
    }
}

/// The `--metrics-addr` endpoint of a mount.
pub struct MetricsEndpoint {
    pub addr: SocketAddr,
}

impl MetricsEndpoint {
    pub fn on_free_port() -> Self {
        Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
        }
    }

    /// The option that serves metrics here.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// `GET /metrics` over HTTP/1.0: the body of a 200 answer.
    pub fn try_scrape(&self) -> io::Result<Scrape> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let text = String::from_utf8(response).map_err(io::Error::other)?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no end of headers in {text:?}")))?;
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.") || status.split_whitespace().nth(1) != Some("200") {
            return Err(io::Error::other(format!("answer {status:?}")));
        }
        Ok(Scrape::parse(body))
    }

    pub fn scrape(&self, mount: &Mount) -> Scrape {
        self.try_scrape().unwrap_or_else(|e| {
            panic!(
                "scraping http://{}/metrics: {e}\nlog:\n{}",
                self.addr,
                mount.log_text()
            )
        })
    }

    /// Scrapes until the endpoint answers (it starts with the mount).
    pub fn wait_until_answering(&self, mount: &Mount) -> Scrape {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.try_scrape() {
                Ok(scrape) => return scrape,
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "http://{}/metrics did not answer within {WAIT:?}: {error}\nlog:\n{}",
                    self.addr,
                    mount.log_text()
                ),
            }
            std::thread::sleep(POLL);
        }
    }

    /// Scrapes until `condition` holds for a scrape (bounded), which it returns.
    pub fn scrape_until(&self, mount: &Mount, what: &str, condition: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + WAIT;
        loop {
            let scrape = self.scrape(mount);
            if condition(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting until {what}; last scrape:\n{}\nlog:\n{}",
                scrape
                    .samples
                    .iter()
                    .filter(|s| s.name.starts_with("s3mount_") && !s.name.contains("_seconds"))
                    .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
                    .collect::<Vec<_>>()
                    .join("\n"),
                mount.log_text()
            );
            std::thread::sleep(POLL);
        }
    }
}
