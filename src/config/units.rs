//! Human-readable durations (`"30s"`, `"250ms"`) and sizes (`"64KiB"`, `"2GiB"`) for the config file.
//!
//! Kept small and strict on purpose: a typo such as `"30"` or `"10 mb"` must be an error with the
//! allowed forms spelled out, not a silently different value.

use std::time::Duration;

/// What the config file accepts for a duration, for error messages.
pub const DURATION_FORMS: &str =
    "a number followed by ms, s, m or h, e.g. \"250ms\", \"30s\", \"5m\"";
/// What the config file accepts for a size, for error messages.
pub const SIZE_FORMS: &str =
    "a number followed by B, KiB, MiB or GiB (or KB, MB, GB for powers of ten), e.g. \"64KiB\"";

/// Parses `"<digits><unit>"` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split_number(text.trim())
        .ok_or_else(|| format!("{text:?} is not a duration: expected {DURATION_FORMS}"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?}: expected {DURATION_FORMS}"
            ));
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses `"<digits><unit>"` into a byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text.trim())
        .ok_or_else(|| format!("{text:?} is not a size: expected {SIZE_FORMS}"))?;
    let factor: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?}: expected {SIZE_FORMS}"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn split_number(text: &str) -> Option<(u64, &str)> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits == text.len() {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

/// Formats a duration the way the config file spells it, for `check` output and docs.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_rejected() {
        assert!(parse_duration("30").unwrap_err().contains("expected"));
        assert!(
            parse_duration("30 days")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("512B"), Ok(512));
    }

    #[test]
    fn sizes_reject_ambiguous_units_and_overflow() {
        assert!(parse_size("10mb").is_err());
        assert!(parse_size("10").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(
            parse_size("18446744073709551615GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations_format_back_to_config_spelling() {
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
