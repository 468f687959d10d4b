//! Parsers for the units users type: memory sizes, CPU counts, durations and
//! published ports.
//!
//! The command line uses them at parse time and the daemon uses them on every
//! spec it receives, so both reject the same input with the same sentence. Each
//! error says what was given and what is allowed.

use std::time::Duration;

use crate::api::{PortDoc, BALANCE_POLICIES, PROTOCOLS, PROXY_PROTOCOLS, PUBLISH_MODES};

/// The most CPUs a limit or reservation may name.
pub const MAX_CPUS: f64 = 1024.0;
/// Nano CPUs in one CPU (Docker's `NanoCpus` unit).
pub const NANO_CPUS_PER_CPU: u64 = 1_000_000_000;

const DURATION_FORMS: &str = "a whole number followed by ms, s, m or h, e.g. 500ms, 2s, 1m, 1h";
const MEMORY_FORMS: &str = "allowed units b, k, m, g (k = 1024 bytes), e.g. 512k, 256m, 1g";
const PORT_FORMS: &str = "expected PUBLISHED:TARGET[/tcp|udp][,OPTION=VALUE...] or \
     published=N,target=N[,OPTION=VALUE...], e.g. 8080:80, 5353:53/udp, \
     8080:80,proxy-protocol=v2 or mode=host,published=8080,target=80";

/// Parses `500ms`, `2s`, `1m` or `1h` (a whole number and one unit).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let digits_end = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, unit) = input.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "duration {input:?} does not start with a number; expected {DURATION_FORMS}"
        ));
    }
    let too_large = || format!("duration {input:?} is too large; expected {DURATION_FORMS}");
    let count: u64 = digits.parse().map_err(|_| too_large())?;
    let seconds_per = match unit {
        "ms" => return Ok(Duration::from_millis(count)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "" => {
            return Err(format!(
                "duration {input:?} has no unit; expected {DURATION_FORMS}"
            ))
        }
        other => {
            return Err(format!(
                "duration {input:?} has unit {other:?}; expected {DURATION_FORMS}"
            ))
        }
    };
    count
        .checked_mul(seconds_per)
        .map(Duration::from_secs)
        .ok_or_else(too_large)
}

/// The shortest form [`parse_duration`] reads back to the same value: `5s`,
/// `1500ms`, `2m`, `1h`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let seconds = millis / 1000;
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// Parses a memory size into bytes with Docker's units: a whole number with an
/// optional unit `b`, `k`/`kb`/`kib`, `m`/`mb`/`mib` or `g`/`gb`/`gib`, any case;
/// k = 1024. A bare number is bytes. Zero is refused (it would mean no memory).
pub fn parse_memory(input: &str) -> Result<u64, String> {
    let digits_end = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, unit) = input.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "size {input:?} does not start with a whole number; {MEMORY_FORMS}"
        ));
    }
    let too_large = || format!("size {input:?} is too large; {MEMORY_FORMS}");
    let count: u64 = digits.parse().map_err(|_| too_large())?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("size {input:?} has unit {unit:?}; {MEMORY_FORMS}")),
    };
    let bytes = count.checked_mul(multiplier).ok_or_else(too_large)?;
    if bytes == 0 {
        return Err(format!("size {input:?} is zero; give at least 1 byte"));
    }
    Ok(bytes)
}

/// Parses a CPU count such as `0.5` or `2` into nano CPUs.
pub fn parse_cpus(input: &str) -> Result<u64, String> {
    let cpus: f64 = input.trim().parse().map_err(|_| {
        format!("{input:?} is not a number; expected a decimal number of CPUs, e.g. 0.5 or 2")
    })?;
    nano_cpus(cpus)
}

/// Converts a CPU count to nano CPUs: more than 0 and at most [`MAX_CPUS`],
/// rounded to the nearest nano CPU.
pub fn nano_cpus(cpus: f64) -> Result<u64, String> {
    if !cpus.is_finite() || cpus <= 0.0 || cpus > MAX_CPUS {
        return Err(format!(
            "{cpus} CPUs is out of range; allowed more than 0 and at most {MAX_CPUS}, e.g. 0.5 or 2"
        ));
    }
    let nano = (cpus * NANO_CPUS_PER_CPU as f64).round() as u64;
    if nano == 0 {
        return Err(format!(
            "{cpus} CPUs is less than one billionth of a CPU; give at least 0.000000001"
        ));
    }
    Ok(nano)
}

/// Parses `PUBLISHED:TARGET[/tcp|udp]` followed by `,KEY=VALUE` options, or
/// the long form `published=N,target=N,...`; ports from 1 to 65535. Options:
/// `mode=ingress|host`, `policy=least-conn|round-robin|local-first`,
/// `proxy-protocol=v2`, and in the long form `protocol=tcp|udp`. Values are
/// stored lowercase, and left out when not given (meaning the default).
pub fn parse_port(input: &str) -> Result<PortDoc, String> {
    let mut parts = input.split(',');
    let first = parts.next().unwrap_or_default();
    let long = first.contains('=');
    let mut doc = if long {
        PortDoc::default()
    } else {
        parse_short_port(first, input)?
    };
    let mut seen = std::collections::BTreeSet::new();
    let options = if long { input.split(',') } else { parts };
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!(
                "port {input:?} has option {option:?} without '='; {PORT_FORMS}"
            ));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().to_ascii_lowercase();
        if !seen.insert(key.clone()) {
            return Err(format!("port {input:?} gives {key} twice"));
        }
        let choice = |allowed: &[&str]| -> Result<Option<String>, String> {
            if allowed.contains(&value.as_str()) {
                Ok(Some(value.clone()))
            } else {
                Err(format!(
                    "port {input:?} has {key}={value:?}; allowed {}",
                    allowed.join(", ")
                ))
            }
        };
        let number = |text: &str| -> Result<u16, String> {
            match text.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!(
                    "port {input:?} has {key}={text:?}; a port is a number from 1 to 65535"
                )),
            }
        };
        match key.as_str() {
            "published" if long => doc.published = number(&value)?,
            "target" if long => doc.target = number(&value)?,
            "protocol" if long => doc.protocol = choice(&PROTOCOLS)?,
            "mode" => doc.mode = choice(&PUBLISH_MODES)?,
            "policy" => doc.policy = choice(&BALANCE_POLICIES)?,
            "proxy-protocol" => doc.proxy_protocol = choice(&PROXY_PROTOCOLS)?,
            _ => {
                return Err(format!(
                    "port {input:?} has unknown option {key:?}; allowed mode, policy, \
                     proxy-protocol (and published, target, protocol in the long form)"
                ))
            }
        }
    }
    for (name, value) in [("published", doc.published), ("target", doc.target)] {
        if value == 0 {
            return Err(format!("port {input:?} has no {name} port; {PORT_FORMS}"));
        }
    }
    Ok(doc)
}

/// `PUBLISHED:TARGET[/tcp|udp]`, the first part of `full`.
fn parse_short_port(part: &str, full: &str) -> Result<PortDoc, String> {
    let input = full;
    let (ports, protocol) = match part.split_once('/') {
        Some((ports, protocol)) => {
            let protocol = protocol.to_ascii_lowercase();
            if !PROTOCOLS.contains(&protocol.as_str()) {
                return Err(format!(
                    "port {input:?} has protocol {protocol:?}; allowed tcp or udp; {PORT_FORMS}"
                ));
            }
            (ports, Some(protocol))
        }
        None => (part, None),
    };
    let Some((published, target)) = ports.split_once(':') else {
        return Err(format!(
            "port {input:?} has no ':' between published and target port; {PORT_FORMS}"
        ));
    };
    let number = |which: &str, text: &str| -> Result<u16, String> {
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!(
                "port {input:?} has {which} port {text:?}; a port is a number from 1 to 65535; {PORT_FORMS}"
            )),
        }
    };
    Ok(PortDoc {
        published: number("published", published)?,
        target: number("target", target)?,
        protocol,
        ..PortDoc::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One data-driven check: `Ok(want)` must match exactly, `Err(fragment)` must
    /// appear in the error.
    fn check<T: PartialEq + std::fmt::Debug>(
        input: &str,
        got: Result<T, String>,
        expected: Result<T, &str>,
    ) {
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{input:?}"),
            (Err(error), Err(fragment)) => {
                assert!(error.contains(fragment), "{input:?}: {error}")
            }
            (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Result<Duration, &str>)] = &[
            ("500ms", Ok(Duration::from_millis(500))),
            ("0ms", Ok(Duration::ZERO)),
            ("2s", Ok(Duration::from_secs(2))),
            ("1m", Ok(Duration::from_secs(60))),
            ("1h", Ok(Duration::from_secs(3600))),
            ("", Err("does not start with a number")),
            ("s", Err("does not start with a number")),
            ("-1s", Err("does not start with a number")),
            ("1.5s", Err("has unit \".5s\"")),
            ("2", Err("has no unit")),
            ("2 s", Err("has unit \" s\"")),
            ("2S", Err("has unit \"S\"")),
            ("3d", Err("500ms, 2s, 1m, 1h")),
            ("99999999999999999999s", Err("too large")),
            ("18446744073709551615h", Err("too large")),
        ];
        for (input, expected) in cases {
            check(input, parse_duration(input), *expected);
        }
    }

    #[test]
    fn durations_format_and_read_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration), "{text}");
        }
    }

    #[test]
    fn memory_sizes() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("1", Ok(1)),
            ("100b", Ok(100)),
            ("512k", Ok(512 << 10)),
            ("512KB", Ok(512 << 10)),
            ("4KiB", Ok(4 << 10)),
            ("256m", Ok(256 << 20)),
            ("256M", Ok(256 << 20)),
            ("1g", Ok(1 << 30)),
            ("2GiB", Ok(2 << 30)),
            ("12q", Err("has unit \"q\"; allowed units b, k, m, g")),
            ("1t", Err("allowed units b, k, m, g")),
            ("1.5g", Err("has unit \".5g\"")),
            ("", Err("does not start with a whole number")),
            ("m", Err("does not start with a whole number")),
            ("-1m", Err("does not start with a whole number")),
            ("0", Err("is zero")),
            ("0m", Err("is zero")),
            ("99999999999999999999", Err("too large")),
            ("17179869184g", Err("too large")),
        ];
        for (input, expected) in cases {
            check(input, parse_memory(input), *expected);
        }
    }

    #[test]
    fn cpus() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("0.5", Ok(500_000_000)),
            ("2", Ok(2_000_000_000)),
            ("1.25", Ok(1_250_000_000)),
            ("0.000000001", Ok(1)),
            ("1024", Ok(1024 * NANO_CPUS_PER_CPU)),
            ("three", Err("\"three\" is not a number")),
            ("", Err("is not a number")),
            ("0", Err("allowed more than 0 and at most 1024")),
            ("-1", Err("out of range")),
            ("1025", Err("out of range")),
            ("NaN", Err("out of range")),
            ("inf", Err("out of range")),
            ("0.0000000001", Err("less than one billionth")),
        ];
        for (input, expected) in cases {
            check(input, parse_cpus(input), *expected);
        }
        assert_eq!(nano_cpus(0.5), Ok(500_000_000));
    }

    #[test]
    fn ports() {
        let port = |published, target, protocol: Option<&str>| PortDoc {
            published,
            target,
            protocol: protocol.map(str::to_owned),
            ..PortDoc::default()
        };
        let host = PortDoc {
            mode: Some("host".into()),
            ..port(8080, 80, None)
        };
        let proxied = PortDoc {
            proxy_protocol: Some("v2".into()),
            policy: Some("local-first".into()),
            ..port(8080, 80, None)
        };
        let cases: &[(&str, Result<PortDoc, &str>)] = &[
            ("8080:80", Ok(port(8080, 80, None))),
            ("mode=host,published=8080,target=80", Ok(host.clone())),
            ("8080:80,mode=HOST", Ok(host)),
            ("8080:80,proxy-protocol=v2,policy=local-first", Ok(proxied)),
            (
                "published=53,target=5353,protocol=udp",
                Ok(port(53, 5353, Some("udp"))),
            ),
            ("8080:80,mode=overlay", Err("allowed ingress, host")),
            ("8080:80,proxy-protocol=v1", Err("allowed v2")),
            ("8080:80,published=9", Err("unknown option \"published\"")),
            ("8080:80,mode=host,mode=host", Err("gives mode twice")),
            ("8080:80,policy", Err("without '='")),
            ("mode=host,target=80", Err("has no published port")),
            ("published=0,target=80", Err("published=\"0\"")),
            ("8080:80/tcp", Ok(port(8080, 80, Some("tcp")))),
            ("5353:53/UDP", Ok(port(5353, 53, Some("udp")))),
            ("65535:1", Ok(port(65535, 1, None))),
            ("80", Err("has no ':'")),
            ("8080:80/sctp", Err("allowed tcp or udp")),
            ("0:80", Err("published port \"0\"")),
            (
                "8080:70000",
                Err("target port \"70000\"; a port is a number from 1 to 65535"),
            ),
            (":80", Err("published port \"\"")),
            ("a:80", Err("published port \"a\"")),
            ("1:2:3", Err("target port \"2:3\"")),
        ];
        for (input, expected) in cases {
            check(input, parse_port(input), expected.clone());
        }
    }
}
