//! One Modbus TCP device, polled on its cadence by one task over one connection.
//!
//! tokio-modbus has no request timeout, and a response that arrives after the caller gave up is
//! read as the answer to the next request on that connection. So every request (and every
//! connect) runs under a timeout, and after any timeout or transport error the connection is
//! dropped and the next poll opens a fresh one: a late answer can never be matched to a later
//! question. An exception is a valid answer; it marks the registers of its request and keeps
//! the connection.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::connection::{Answer, ModbusConnection};
use super::{decode, decode_bit, plan_reads, DecodeError, ModbusConfig, ReadRequest};
use crate::backoff::Backoff;
use crate::ingest::{IngestHandle, Sample};
use crate::metrics::registered;
use crate::status::StatusBoard;
use crate::store::Status;

/// The protocol name readings are submitted under.
pub const PROTOCOL: &str = "modbus";

/// Metrics of every poller of this instance, registered once in the instance's registry.
#[derive(Clone)]
pub struct ModbusMetrics {
    poll_duration: Histogram,
    polls: IntCounterVec,
    register_errors: IntCounterVec,
    /// Devices this instance holds the lease of and polls.
    pub devices_polled: IntGauge,
}

impl ModbusMetrics {
    pub fn register(registry: &Registry) -> Self {
        let poll_duration = registered(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "ddms_modbus_poll_duration_seconds",
                    "Time to read a device's whole register map, connecting included",
                )
                // Fine below 50 ms: loopback and LAN polls live there, and the benchmark reads its
                // p99 from these buckets.
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            ),
        );
        let polls = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_modbus_polls_total",
                    "Polls by result: ok, error (answered with exceptions or undecodable values), \
                 timeout, unreachable",
                ),
                &["result"],
            ),
        );
        let register_errors = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "ddms_modbus_register_errors_total",
                    "Registers a poll could not read, by Modbus exception (or invalid_value)",
                ),
                &["exception"],
            ),
        );
        let devices_polled = registered(
            registry,
            IntGauge::new(
                "ddms_modbus_devices_polled",
                "Modbus devices this instance holds the lease of and polls",
            ),
        );
        ModbusMetrics {
            poll_duration,
            polls,
            register_errors,
            devices_polled,
        }
    }
}

/// What a poller needs besides its device.
#[derive(Clone)]
pub struct PollerContext {
    pub ingest: IngestHandle,
    pub status: StatusBoard,
    pub metrics: ModbusMetrics,
    /// The configured request timeout; a device's poll interval caps it.
    pub request_timeout: Duration,
}

/// Why a poll reached no answer: the device counts as unreachable and the connection is dropped.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("no answer within {timeout_ms} ms {during}")]
    Timeout { during: String, timeout_ms: u128 },
    #[error("{during}: {source}")]
    Transport {
        during: String,
        source: tokio_modbus::Error,
    },
    #[error("{during}: the device sent {got} values, {expected} were asked for")]
    ShortAnswer {
        during: String,
        expected: usize,
        got: usize,
    },
}

impl PollError {
    fn result_label(&self) -> &'static str {
        match self {
            PollError::Timeout { .. } => "timeout",
            _ => "unreachable",
        }
    }
}

/// A register the device answered for, but without a usable value.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterError {
    pub metric: String,
    pub problem: RegisterProblem,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegisterProblem {
    #[error("Modbus exception 0x{code:02X} ({exception})", code = u8::from(*.0), exception = exception_label(*.0))]
    Exception(ExceptionCode),
    #[error("{0}")]
    Invalid(DecodeError),
}

impl RegisterProblem {
    /// The `exception` label of `ddms_modbus_register_errors_total`.
    pub fn label(&self) -> String {
        match self {
            RegisterProblem::Exception(code) => exception_label(*code),
            RegisterProblem::Invalid(_) => "invalid_value".to_owned(),
        }
    }
}

/// A stable, readable name for an exception code (metric label and status text).
pub fn exception_label(code: ExceptionCode) -> String {
    let name = match code {
        ExceptionCode::IllegalFunction => "illegal_function",
        ExceptionCode::IllegalDataAddress => "illegal_data_address",
        ExceptionCode::IllegalDataValue => "illegal_data_value",
        ExceptionCode::ServerDeviceFailure => "server_device_failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server_device_busy",
        ExceptionCode::MemoryParityError => "memory_parity_error",
        ExceptionCode::GatewayPathUnavailable => "gateway_path_unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway_target_device",
        ExceptionCode::Custom(code) => return format!("code_{code}"),
    };
    name.to_owned()
}

/// What one poll produced. Readings read before a transport failure are kept: they are real
/// values of the poll's instant.
#[derive(Debug, Default)]
pub struct PollReport {
    pub samples: Vec<Sample>,
    pub register_errors: Vec<RegisterError>,
    pub failure: Option<PollError>,
}

/// Back-off while a device is unreachable: 1 s, 2 s, 4 s … capped at 60 s, each delay spread by
/// ±25 % so devices behind one failed gateway do not retry in step.
pub const UNREACHABLE_RETRY: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// The first tick of the cadence `scheduled + k × interval` (k ≥ 1) after `now`: a poll that
/// overran skips the ticks it missed instead of firing them in a burst.
pub fn next_tick(scheduled: Instant, interval: Duration, now: Instant) -> Instant {
    let next = scheduled + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let skipped = behind / interval.as_nanos().max(1) + 1;
    next + interval.saturating_mul(u32::try_from(skipped).unwrap_or(u32::MAX))
}

/// A device being polled: its configuration, its read plan and, between polls, its connection.
pub struct DevicePoller {
    device_id: Uuid,
    config: ModbusConfig,
    plan: Vec<ReadRequest>,
    request_timeout: Duration,
    connection: Option<ModbusConnection>,
}

impl DevicePoller {
    pub fn new(device_id: Uuid, config: ModbusConfig, request_timeout: Duration) -> Self {
        let plan = plan_reads(&config.registers, config.max_gap);
        let interval = Duration::from_millis(config.poll_interval_ms);
        DevicePoller {
            device_id,
            plan,
            request_timeout: request_timeout.min(interval),
            config,
            connection: None,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }

    /// Reads the whole register map once; `at` is the readings' timestamp.
    pub async fn poll(&mut self, at: DateTime<Utc>) -> PollReport {
        let mut report = PollReport::default();
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => match connect(&self.config, self.request_timeout).await {
                Ok(connection) => connection,
                Err(e) => {
                    report.failure = Some(e);
                    return report;
                }
            },
        };
        for request in &self.plan {
            let during = || {
                format!(
                    "reading {} {}..{}",
                    request.kind,
                    request.start,
                    u32::from(request.start) + u32::from(request.count) - 1
                )
            };
            let answer = match tokio::time::timeout(
                self.request_timeout,
                connection.read(request.kind, request.start, request.count),
            )
            .await
            {
                Err(_) => Err(PollError::Timeout {
                    during: during(),
                    timeout_ms: self.request_timeout.as_millis(),
                }),
                Ok(Err(source)) => Err(PollError::Transport {
                    during: during(),
                    source,
                }),
                Ok(Ok(Err(exception))) => {
                    for &(index, _) in &request.items {
                        report.register_errors.push(RegisterError {
                            metric: self.config.registers[index].metric.clone(),
                            problem: RegisterProblem::Exception(exception),
                        });
                    }
                    continue;
                }
                Ok(Ok(Ok(answer))) if answer.len() < usize::from(request.count) => {
                    Err(PollError::ShortAnswer {
                        during: during(),
                        expected: usize::from(request.count),
                        got: answer.len(),
                    })
                }
                Ok(Ok(Ok(answer))) => Ok(answer),
            };
            match answer {
                Ok(answer) => self.decode_into(&mut report, request, &answer, at),
                Err(failure) => {
                    // The connection may still deliver the answer we gave up on: never reuse it.
                    report.failure = Some(failure);
                    return report;
                }
            }
        }
        self.connection = Some(connection);
        report
    }

    /// Closes the connection; the next poll opens a new one.
    pub fn disconnect(&mut self) {
        self.connection = None;
    }

    fn decode_into(
        &self,
        report: &mut PollReport,
        request: &ReadRequest,
        answer: &Answer,
        at: DateTime<Utc>,
    ) {
        for &(index, offset) in &request.items {
            let register = &self.config.registers[index];
            let offset = usize::from(offset);
            let value = match answer {
                Answer::Words(words) => decode(
                    register,
                    &words[offset..offset + usize::from(register.width())],
                ),
                Answer::Bits(bits) => decode_bit(register, bits[offset]),
            };
            match value {
                Ok(value) => report.samples.push(Sample {
                    device_id: self.device_id,
                    metric: register.metric.clone(),
                    unit: register.unit.clone(),
                    ts: at,
                    value,
                }),
                Err(e) => report.register_errors.push(RegisterError {
                    metric: register.metric.clone(),
                    problem: RegisterProblem::Invalid(e),
                }),
            }
        }
    }
}

/// Opens the device's connection (resolving its host name), within `timeout`.
async fn connect(config: &ModbusConfig, timeout: Duration) -> Result<ModbusConnection, PollError> {
    let target = format!("{}:{}", config.host, config.port);
    let connecting = TcpStream::connect((config.host.as_str(), config.port));
    let stream = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(PollError::Timeout {
                during: format!("connecting to {target}"),
                timeout_ms: timeout.as_millis(),
            })
        }
        Ok(Err(source)) => return Err(PollError::Connect { target, source }),
        Ok(Ok(stream)) => stream,
    };
    // Requests are small and answered one at a time: do not let Nagle hold them back.
    let _ = stream.set_nodelay(true);
    Ok(ModbusConnection::new(stream, config.unit_id))
}

/// One line naming every register that failed, for the device's status.
fn describe(errors: &[RegisterError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.metric, e.problem))
        .collect();
    let noun = if errors.len() == 1 {
        "register"
    } else {
        "registers"
    };
    format!("{} {noun} unreadable: {}", errors.len(), parts.join("; "))
}

/// Polls one device until `cancel`: on its cadence while it answers, with back-off while it
/// does not. Readings carry the time their poll started.
pub async fn run(
    device_id: Uuid,
    config: ModbusConfig,
    context: PollerContext,
    cancel: CancellationToken,
) {
    let mut device = DevicePoller::new(device_id, config, context.request_timeout);
    let interval = device.interval();
    let mut retries = UNREACHABLE_RETRY.retries();
    let mut scheduled = Instant::now();
    let mut unreachable = false;
    let mut last_problem: Option<String> = None;
    tracing::debug!(device.id = %device_id, interval_ms = interval.as_millis() as u64, "poller started");
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            () = tokio::time::sleep_until(scheduled) => {}
        }
        let at = Utc::now();
        let started = Instant::now();
        let report = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            report = device.poll(at) => report,
        };
        context
            .metrics
            .poll_duration
            .observe(started.elapsed().as_secs_f64());
        for error in &report.register_errors {
            context
                .metrics
                .register_errors
                .with_label_values(&[error.problem.label().as_str()])
                .inc();
            // A value the device sent that can never be a reading is a refused reading too.
            if let RegisterProblem::Invalid(e) = &error.problem {
                if let Some(reason) = e.rejection_reason() {
                    context.ingest.metrics().reject(PROTOCOL, reason);
                }
            }
        }
        if !report.samples.is_empty() {
            let submitted = context.ingest.submit_then(
                PROTOCOL,
                report.samples,
                // The writer holds readings while the database is unavailable and retries; what
                // reaches here failed for good and is counted there (`ddms_readings_rejected_total`
                // when refused, `ddms_readings_failed_total` when given up at shutdown). A poller
                // retrying would only queue the same readings again.
                Box::new(move |result| match result {
                    Ok(()) => {}
                    Err(e) if e.is_refusal() => {
                        tracing::warn!(device.id = %device_id, error = %e, "Modbus readings refused");
                    }
                    Err(e) => {
                        tracing::warn!(device.id = %device_id, error = %e, "Modbus readings were not stored");
                    }
                }),
            );
            // A full pipeline holds the poller back (backpressure), but never past shutdown.
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                result = submitted => if result.is_err() { break },
            }
        }
        match report.failure {
            None => {
                retries.reset();
                if unreachable {
                    tracing::info!(device.id = %device_id, "Modbus device answers again");
                    unreachable = false;
                }
                let result = if report.register_errors.is_empty() {
                    if last_problem.take().is_some() {
                        tracing::info!(device.id = %device_id, "every register of the Modbus device reads again");
                    }
                    context.status.record_success(device_id, at).await;
                    "ok"
                } else {
                    let problem = describe(&report.register_errors);
                    if last_problem.as_ref() != Some(&problem) {
                        tracing::warn!(device.id = %device_id, problem = %problem, "Modbus device answered with errors");
                    }
                    context.status.record_error(device_id, &problem, at).await;
                    last_problem = Some(problem);
                    "error"
                };
                context.metrics.polls.with_label_values(&[result]).inc();
                scheduled = next_tick(scheduled, interval, Instant::now());
            }
            Some(failure) => {
                let delay = retries
                    .next_delay_spread(rand::random::<f64>())
                    .max(interval);
                if unreachable {
                    tracing::debug!(device.id = %device_id, error = %failure, retry_in_ms = delay.as_millis() as u64, "Modbus device still unreachable");
                } else {
                    tracing::warn!(device.id = %device_id, error = %failure, retry_in_ms = delay.as_millis() as u64, "Modbus device unreachable");
                    unreachable = true;
                }
                context
                    .metrics
                    .polls
                    .with_label_values(&[failure.result_label()])
                    .inc();
                context
                    .status
                    .record_failure(device_id, Status::Offline, &failure.to_string(), at)
                    .await;
                scheduled = Instant::now() + delay;
            }
        }
    }
    device.disconnect();
    tracing::debug!(device.id = %device_id, "poller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_device_is_retried_from_one_second_up_to_a_minute_spread_a_quarter() {
        let mut retries = UNREACHABLE_RETRY.retries();
        let nominal: Vec<u64> = (0..9)
            .map(|_| retries.next_delay_spread(0.5).as_secs())
            .collect();
        assert_eq!(nominal, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let mut low = UNREACHABLE_RETRY.retries();
        assert_eq!(low.next_delay_spread(0.0), Duration::from_millis(750));
        let mut high = UNREACHABLE_RETRY.retries();
        assert_eq!(high.next_delay_spread(0.9), Duration::from_millis(1200));
    }

    #[test]
    fn the_next_tick_keeps_the_cadence_and_skips_missed_ticks() {
        let start = Instant::now();
        let interval = Duration::from_millis(1000);
        let ms = |n: u64| start + Duration::from_millis(n);
        // (now, expected next tick) for a poll scheduled at `start`
        let cases = [
            (ms(10), ms(1000)),
            (ms(999), ms(1000)),
            (ms(1000), ms(2000)),
            (ms(1500), ms(2000)),
            (ms(3200), ms(4000)),
        ];
        for (now, expected) in cases {
            assert_eq!(
                next_tick(start, interval, now),
                expected,
                "{:?}",
                now - start
            );
        }
    }

    #[test]
    fn exceptions_have_stable_labels() {
        assert_eq!(
            exception_label(ExceptionCode::IllegalDataAddress),
            "illegal_data_address"
        );
        assert_eq!(exception_label(ExceptionCode::Custom(0x42)), "code_66");
        assert_eq!(
            RegisterProblem::Exception(ExceptionCode::IllegalDataAddress).to_string(),
            "Modbus exception 0x02 (illegal_data_address)"
        );
    }

    #[test]
    fn the_status_text_names_every_failed_register() {
        let errors = [
            RegisterError {
                metric: "flow".into(),
                problem: RegisterProblem::Exception(ExceptionCode::IllegalDataAddress),
            },
            RegisterError {
                metric: "level".into(),
                problem: RegisterProblem::Exception(ExceptionCode::ServerDeviceBusy),
            },
        ];
        assert_eq!(
            describe(&errors),
            "2 registers unreadable: flow: Modbus exception 0x02 (illegal_data_address); \
             level: Modbus exception 0x06 (server_device_busy)"
        );
    }
}
