//! What one reading may be, for every producer: MQTT parsing and Modbus decoding refuse what is
//! out of bounds with a reason, and the batch writer checks once more before anything reaches
//! the store, so no producer can store a value that breaks the rollups for everyone.
//! `docs/limits.md` lists these limits.

/// The largest magnitude a reading may have. The rollups keep each bucket's sum as an `f64`:
/// `1e308` twice overflows it (PostgreSQL refuses the whole statement, SQLite stores an infinity
/// and averages become null). With readings bounded by 1e15 a bucket would need more than 1e293
/// readings to overflow, and whole numbers up to 2^53 (about 9e15) are still exact.
pub const MAX_ABS_VALUE: f64 = 1e15;

/// The longest unit text (in characters) a series may carry, e.g. `°C` or `kWh`.
pub const MAX_UNIT_CHARS: usize = 32;

/// The longest metric name (in characters): the MQTT payload and the Modbus register map allow
/// no longer one.
pub const MAX_METRIC_CHARS: usize = 100;

/// Why a reading cannot be stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleProblem {
    #[error("value {0} is not a finite number")]
    NotFinite(f64),
    #[error("value {0:e} is outside ±{MAX_ABS_VALUE:e}")]
    OutOfRange(f64),
    #[error("metric name must be 1 to {MAX_METRIC_CHARS} characters")]
    InvalidMetric,
    #[error("unit must be at most {MAX_UNIT_CHARS} characters, got {0}")]
    UnitTooLong(usize),
}

impl SampleProblem {
    /// The `reason` label of `ddms_readings_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SampleProblem::NotFinite(_) => "not_finite",
            SampleProblem::OutOfRange(_) => "value_out_of_range",
            SampleProblem::InvalidMetric => "invalid_metric_name",
            SampleProblem::UnitTooLong(_) => "unit_too_long",
        }
    }
}

/// The value if a reading may hold it.
pub fn check_value(value: f64) -> Result<f64, SampleProblem> {
    if !value.is_finite() {
        Err(SampleProblem::NotFinite(value))
    } else if value.abs() > MAX_ABS_VALUE {
        Err(SampleProblem::OutOfRange(value))
    } else {
        Ok(value)
    }
}

/// Whether a series may carry this unit.
pub fn check_unit(unit: Option<&str>) -> Result<(), SampleProblem> {
    match unit.map(|u| u.chars().count()) {
        Some(chars) if chars > MAX_UNIT_CHARS => Err(SampleProblem::UnitTooLong(chars)),
        _ => Ok(()),
    }
}

/// Whether a metric name has an acceptable length (producers check the characters).
pub fn check_metric(metric: &str) -> Result<(), SampleProblem> {
    if metric.is_empty() || metric.chars().count() > MAX_METRIC_CHARS {
        Err(SampleProblem::InvalidMetric)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_within_the_range_pass_and_others_say_why() {
        for ok in [
            0.0,
            -0.0,
            1.5,
            MAX_ABS_VALUE,
            -MAX_ABS_VALUE,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(check_value(ok), Ok(ok));
        }
        assert_eq!(
            check_value(1e308).unwrap_err().reason(),
            "value_out_of_range"
        );
        assert_eq!(
            check_value(-1.000_000_1e15).unwrap_err().reason(),
            "value_out_of_range"
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(check_value(bad).unwrap_err().reason(), "not_finite");
        }
    }

    #[test]
    fn units_and_metrics_are_bounded_in_characters() {
        assert_eq!(check_unit(None), Ok(()));
        assert_eq!(check_unit(Some(&"°".repeat(MAX_UNIT_CHARS))), Ok(()));
        assert_eq!(
            check_unit(Some(&"x".repeat(MAX_UNIT_CHARS + 1))),
            Err(SampleProblem::UnitTooLong(MAX_UNIT_CHARS + 1))
        );
        assert_eq!(check_metric("t"), Ok(()));
        assert_eq!(check_metric(""), Err(SampleProblem::InvalidMetric));
        assert_eq!(
            check_metric(&"m".repeat(MAX_METRIC_CHARS + 1)),
            Err(SampleProblem::InvalidMetric)
        );
    }
}
