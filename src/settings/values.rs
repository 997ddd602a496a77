//! Typed configuration values: each is parsed and checked once, when the configuration is
//! loaded, and serializes back to the text `edgeplex run` accepts (`run --check` prints it).
//!
//! A value that does not parse is a one-line error naming what is allowed; the loader adds the
//! key in front of it.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A ring file mode: readable by the owner and writable by no one else (`ring.mode`).
///
/// Written as an octal string (`"0644"`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(u32);

impl FileMode {
    /// Owner read-write, everyone read: the default.
    pub const DEFAULT: FileMode = FileMode(0o644);

    /// The mode bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Check `bits` for a ring file.
    pub fn new(bits: u32) -> Result<FileMode, String> {
        if bits > 0o777 {
            return Err(format!("{bits:#o} is not a file mode: allowed 0000..0777"));
        }
        if bits & 0o022 != 0 {
            return Err(format!(
                "\"{bits:04o}\" lets readers write the ring; use \"0644\" or \"0640\""
            ));
        }
        if bits & 0o600 != 0o600 {
            return Err(format!(
                "\"{bits:04o}\" must give the owner (the agent) read and write, e.g. \"0644\""
            ));
        }
        Ok(FileMode(bits))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(i64),
        }
        let bits = match Repr::deserialize(d)? {
            Repr::Text(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                serde::de::Error::custom(format!(
                    "{s:?} is not an octal mode; use e.g. \"0644\" or \"0640\""
                ))
            })?,
            Repr::Number(n) => u32::try_from(n).map_err(|_| {
                serde::de::Error::custom(format!("{n} is not a file mode; use e.g. \"0644\""))
            })?,
        };
        FileMode::new(bits).map_err(serde::de::Error::custom)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

/// A group id, configured by name or number (`ring.group`). Names are resolved from
/// `/etc/group` at load time: the snap and container images have no NSS modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GroupId(pub u32);

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(i64),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(n) => u32::try_from(n)
                .map(GroupId)
                .map_err(|_| serde::de::Error::custom(format!("{n} is not a valid group id"))),
            Repr::Name(name) => match name.parse::<u32>() {
                Ok(gid) => Ok(GroupId(gid)),
                Err(_) => lookup_group(&name).map(GroupId).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "{name:?}: no such group in /etc/group; use a group name or number"
                    ))
                }),
            },
        }
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Where an HTTP endpoint listens, or nowhere (`""`). `HOST:PORT`, where HOST may be a name
/// such as `localhost` (resolved once, at load time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(Option<SocketAddr>);

impl Listen {
    /// Listen on `addr`.
    pub fn on(addr: SocketAddr) -> Listen {
        Listen(Some(addr))
    }

    /// No endpoint.
    pub const OFF: Listen = Listen(None);

    /// The address, unless the endpoint is disabled.
    pub fn addr(self) -> Option<SocketAddr> {
        self.0
    }

    /// Parse `HOST:PORT` or `""`.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if text.is_empty() {
            return Ok(Listen::OFF);
        }
        let bad = || {
            format!(
                "{text:?} is not an address; use HOST:PORT such as \"0.0.0.0:9464\" or \"localhost:9464\", or \"\" to disable"
            )
        };
        if text.contains('\0') {
            return Err(bad());
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Listen::on(addr));
        }
        // A name: resolve it (from /etc/hosts for localhost), preferring IPv4 as most
        // clients do.
        let addrs: Vec<SocketAddr> = text.to_socket_addrs().map_err(|_| bad())?.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .map(Listen::on)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str(""),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Listen::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A log filter in `RUST_LOG` syntax, checked at load time (`log.level`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LogFilter(String);

impl LogFilter {
    /// Check `text` as a filter.
    pub fn parse(text: &str) -> Result<LogFilter, String> {
        match tracing_subscriber::EnvFilter::try_new(text) {
            Ok(_) if !text.contains('\0') => Ok(LogFilter(text.to_owned())),
            _ => Err(format!(
                "{text:?} is not a valid filter; use e.g. \"info\" or \"info,edgeplex=debug\""
            )),
        }
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter("info".into())
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        LogFilter::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A V4L2 pixel format code such as `YUYV` or `MJPG`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FourCc(pub u32);

impl FourCc {
    /// Parse four characters.
    pub fn parse(text: &str) -> Result<FourCc, String> {
        crate::ring::layout::fourcc_from_str(text)
            .filter(|_| text.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .map(FourCc)
            .ok_or_else(|| {
                format!("{text:?} is not a four-character code such as \"YUYV\" or \"MJPG\"")
            })
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::ring::layout::fourcc_str(self.0))
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FourCc({self})")
    }
}

impl<'de> Deserialize<'de> for FourCc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        FourCc::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for FourCc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(FileMode::new(0o640).unwrap().bits(), 0o640);
        assert!(FileMode::new(0o666)
            .unwrap_err()
            .contains("lets readers write"));
        assert!(FileMode::new(0o444).unwrap_err().contains("owner"));
        assert!(FileMode::new(0o1644).is_err());
    }

    #[test]
    fn listen_accepts_names_and_empty() {
        assert_eq!(Listen::parse("").unwrap(), Listen::OFF);
        assert_eq!(
            Listen::parse("127.0.0.1:9464").unwrap().addr(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let local = Listen::parse("localhost:19471").unwrap().addr().unwrap();
        assert!(local.ip().is_loopback(), "{local}");
        assert_eq!(local.port(), 19471);
        for bad in ["nowhere", "localhost", "1.2.3.4:99999", "a\0b:1"] {
            assert!(Listen::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fourcc_round_trips() {
        let f = FourCc::parse("MJPG").unwrap();
        assert_eq!(f.to_string(), "MJPG");
        assert!(FourCc::parse("YUV").is_err());
        assert!(FourCc::parse("YU\nV").is_err());
    }
}
