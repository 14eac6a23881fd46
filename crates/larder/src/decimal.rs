//! Exact decimal arithmetic for write-back increments of `numeric(p, s)`
//! columns, as fixed-point integers ("units" of 10^-s).
//!
//! Why not floating point: Redis' `HINCRBYFLOAT` and Lua's numbers are
//! binary doubles, so adding 0.01 to 123456789012678.01 gives …678.015625,
//! and a counter drifts from what the database, adding in decimal, holds.
//! A numeric column has a fixed scale, so every value and every increment
//! of it is an integer number of units: deltas are kept in Redis as
//! integers (`HINCRBY`, exact in 64 bits), the write script sums the
//! cached field on digit strings (`store/redis_counters.rs`), a read that
//! lays pending deltas over a loaded row sums here in 128 bits, and the
//! database is sent decimal text.

/// The units of `text` (a JSON number: `-12.5`, `1.50`, `3e2`) at `scale`
/// decimal places; `None` if it has more decimal places than `scale`,
/// is not a plain JSON number, or does not fit in 128 bits.
pub(crate) fn to_units(text: &str, scale: u32) -> Option<i128> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => {
            let exp = &body[at + 1..];
            let exp = exp.strip_prefix('+').unwrap_or(exp);
            (&body[..at], exp.parse::<i32>().ok()?)
        }
        None => (body, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit())
        || (mantissa.contains('.') && fraction.is_empty())
    {
        return None;
    }
    // digits × 10^(exponent - fraction digits) × 10^scale
    let fraction = fraction.trim_end_matches('0');
    let shift = i64::from(exponent) - i64::try_from(fraction.len()).ok()? + i64::from(scale);
    let mut units: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        units = units.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
    }
    if shift >= 0 {
        units = units.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?;
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-shift).ok()?)?;
        if units % divisor != 0 {
            return None;
        }
        units /= divisor;
    }
    Some(if negative { -units } else { units })
}

/// `units` at `scale` decimal places as decimal text with exactly `scale`
/// places (`12345`, 2 → `123.45`; `-5`, 2 → `-0.05`).
pub(crate) fn from_units(units: i128, scale: u32) -> String {
    let digits = units.unsigned_abs().to_string();
    let sign = if units < 0 { "-" } else { "" };
    let scale = scale as usize;
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

/// The largest magnitude, in units, of a `numeric(precision, scale)`
/// value: 10^precision − 1; `None` when it does not fit in 128 bits.
pub(crate) fn max_units(precision: u32) -> Option<i128> {
    10i128.checked_pow(precision).map(|p| p - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_units_exactly_or_not_at_all() {
        assert_eq!(to_units("123.45", 2), Some(12_345));
        assert_eq!(to_units("1.50", 2), Some(150));
        assert_eq!(to_units("1.5", 2), Some(150));
        assert_eq!(to_units("7", 2), Some(700));
        assert_eq!(to_units("-0.05", 2), Some(-5));
        assert_eq!(to_units("3e2", 0), Some(300));
        assert_eq!(to_units("1.5E-1", 2), Some(15));
        assert_eq!(to_units("0.001", 2), None);
        assert_eq!(to_units("1e-3", 2), None);
        assert_eq!(to_units("abc", 2), None);
        assert_eq!(to_units("1.", 2), None);
        assert_eq!(to_units("", 2), None);
        assert_eq!(to_units("1e400", 2), None);
        assert_eq!(
            to_units("123456789012678.01", 2),
            Some(12_345_678_901_267_801)
        );
    }

    #[test]
    fn units_become_text_with_the_scale_s_places() {
        assert_eq!(from_units(12_345, 2), "123.45");
        assert_eq!(from_units(-5, 2), "-0.05");
        assert_eq!(from_units(0, 2), "0.00");
        assert_eq!(from_units(42, 0), "42");
        assert_eq!(from_units(12_345_678_901_267_802, 2), "123456789012678.02");
    }

    #[test]
    fn sums_stay_exact_where_doubles_drift() {
        let a = to_units("123456789012678.01", 2).expect("units");
        let b = to_units("0.01", 2).expect("units");
        assert_eq!(from_units(a + b, 2), "123456789012678.02");
        assert_eq!(max_units(5), Some(99_999));
        assert_eq!(max_units(40), None);
    }
}
