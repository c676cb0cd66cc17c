//! Parsing of human-friendly sizes and durations for the command line.

use std::time::Duration;

/// A size or duration that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// Not a size.
    #[error(
        "'{0}' is not a size; use a number of bytes with an optional unit: 4M, 64MiB, 1G, 1048576"
    )]
    Size(String),
    /// Not a duration.
    #[error("'{0}' is not a duration; use a number with a unit: 500ms, 5s, 2m")]
    Duration(String),
}

/// Parses `16M`, `16MiB`, `16MB` (binary units, as memory is), `1G`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::Size(text.to_owned()))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(UnitError::Size(text.to_owned())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::Size(text.to_owned()))
}

/// Parses `500ms`, `5s`, `2m`, `1h 30m`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| UnitError::Duration(text.to_owned()));
    }
    humantime::parse_duration(t).map_err(|_| UnitError::Duration(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e20").is_err());
        assert!(parse_duration("NaN").is_err());
    }
}
