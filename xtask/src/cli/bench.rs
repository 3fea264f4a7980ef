//! `cargo xtask bench …`: the benchmarks' flags, handed on to their drivers as given.

use clap::{Args, Subcommand};

/// The benchmarks. Flags left out take the driver's defaults.
#[derive(Debug, Subcommand)]
pub enum Bench {
    /// MQTT → Mosquitto → ddms → PostgreSQL vs a raw COPY.
    Ingest {
        /// Seconds of load.
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// Simulated devices.
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Messages a second, all devices together.
        #[arg(long, value_name = "MSGS_PER_S")]
        rate: Option<String>,
        /// Metrics per message.
        #[arg(long, value_name = "PER_MSG")]
        metrics: Option<String>,
        /// postgres or sqlite.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// Also measure with N enabled threshold rules over the benchmark's series.
        #[arg(long, value_name = "N")]
        rules: Option<String>,
        /// Rounds: windows with and without rules (with --rules), or side-by-side rounds
        /// alternating who goes first (with --peer).
        #[arg(long, value_name = "R")]
        rounds: Option<String>,
        /// Side by side with the benchmark peer set's Python ingester: the directory holding
        /// peer_ingest.py and mqtt_load.py.
        #[arg(long, value_name = "DIR")]
        peer: Option<String>,
        /// Generator processes (with --peer).
        #[arg(long, value_name = "P")]
        procs: Option<String>,
        /// Seconds the generator fills the broker for a paused ddms before the backlog drain
        /// (with --peer).
        #[arg(long, value_name = "S")]
        backlog_seconds: Option<String>,
        /// A DDMS_KEY=VALUE setting for ddms (with --peer; repeatable).
        #[arg(long = "env", value_name = "DDMS_KEY=VALUE")]
        env: Vec<String>,
    },
    /// Many simulated Modbus devices polled by a release ddms.
    Modbus {
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Poll interval per device.
        #[arg(long, value_name = "I")]
        interval_ms: Option<String>,
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// Share of devices that never answer.
        #[arg(long, value_name = "F")]
        dead_fraction: Option<String>,
        /// sqlite (default) or postgres.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
    },
    /// Many MQTT devices connected to one release ddms (embedded broker), each publishing one
    /// QoS 1 reading per interval: connections, memory, cadence, acknowledged vs stored.
    MqttFleet {
        #[arg(long, value_name = "N")]
        devices: Option<String>,
        /// Seconds between one device's messages.
        #[arg(long, value_name = "I")]
        interval_s: Option<String>,
        /// Seconds of publishing.
        #[arg(long, value_name = "S")]
        seconds: Option<String>,
        /// sqlite or postgres.
        #[arg(long, value_name = "BACKEND")]
        backend: Option<String>,
        /// New connections a second while the fleet connects.
        #[arg(long, value_name = "R")]
        connect_rate: Option<String>,
        /// A DDMS_KEY=VALUE setting for ddms (repeatable).
        #[arg(long = "env", value_name = "DDMS_KEY=VALUE")]
        env: Vec<String>,
    },
    /// Server-sent events to many dashboard clients.
    Sse(WebBench),
    /// The read API under load.
    Api(WebBench),
    /// Blue-green switches under load on the Docker e2e fleet: switch time, per-host deploy
    /// time, failed requests.
    Deploy {
        /// Deploys to measure.
        #[arg(long, value_name = "N")]
        switches: Option<String>,
        /// Requests a second during the switches.
        #[arg(long, value_name = "R")]
        rate: Option<String>,
        /// Fewest requests a switch must see.
        #[arg(long, value_name = "M")]
        min_requests: Option<String>,
        /// Only load, no switch, for this many seconds.
        #[arg(long, value_name = "S")]
        load_only: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct WebBench {
    #[arg(long, value_name = "N")]
    devices: Option<String>,
    #[arg(long, value_name = "I")]
    interval_ms: Option<String>,
    #[arg(long, value_name = "S")]
    seconds: Option<String>,
    #[arg(long, value_name = "N")]
    clients: Option<String>,
    #[arg(long, value_name = "R")]
    rate: Option<String>,
    #[arg(long, value_name = "N")]
    history_devices: Option<String>,
}

impl Bench {
    /// The benchmark's name and the flags for its driver, as given.
    pub fn driver_args(&self) -> (&'static str, Vec<String>) {
        fn flags(pairs: &[(&str, &Option<String>)]) -> Vec<String> {
            pairs
                .iter()
                .filter_map(|(name, value)| value.as_ref().map(|v| [name.to_string(), v.clone()]))
                .flatten()
                .collect()
        }
        match self {
            Bench::Ingest {
                seconds,
                devices,
                rate,
                metrics,
                backend,
                rules,
                rounds,
                peer,
                procs,
                backlog_seconds,
                env,
            } => (
                "ingest",
                [
                    flags(&[
                        ("--seconds", seconds),
                        ("--devices", devices),
                        ("--rate", rate),
                        ("--metrics", metrics),
                        ("--backend", backend),
                        ("--rules", rules),
                        ("--rounds", rounds),
                        ("--peer", peer),
                        ("--procs", procs),
                        ("--backlog-seconds", backlog_seconds),
                    ]),
                    env.iter()
                        .flat_map(|e| ["--env".to_string(), e.clone()])
                        .collect(),
                ]
                .concat(),
            ),
            Bench::Modbus {
                devices,
                interval_ms,
                seconds,
                dead_fraction,
                backend,
            } => (
                "modbus",
                flags(&[
                    ("--devices", devices),
                    ("--interval-ms", interval_ms),
                    ("--seconds", seconds),
                    ("--dead-fraction", dead_fraction),
                    ("--backend", backend),
                ]),
            ),
            Bench::MqttFleet {
                devices,
                interval_s,
                seconds,
                backend,
                connect_rate,
                env,
            } => (
                "mqtt-fleet",
                [
                    flags(&[
                        ("--devices", devices),
                        ("--interval-s", interval_s),
                        ("--seconds", seconds),
                        ("--backend", backend),
                        ("--connect-rate", connect_rate),
                    ]),
                    env.iter()
                        .flat_map(|e| ["--env".to_string(), e.clone()])
                        .collect(),
                ]
                .concat(),
            ),
            Bench::Sse(web) | Bench::Api(web) => (
                if matches!(self, Bench::Sse(_)) {
                    "sse"
                } else {
                    "api"
                },
                flags(&[
                    ("--devices", &web.devices),
                    ("--interval-ms", &web.interval_ms),
                    ("--seconds", &web.seconds),
                    ("--clients", &web.clients),
                    ("--rate", &web.rate),
                    ("--history-devices", &web.history_devices),
                ]),
            ),
            Bench::Deploy {
                switches,
                rate,
                min_requests,
                load_only,
            } => (
                "deploy",
                flags(&[
                    ("--switches", switches),
                    ("--rate", rate),
                    ("--min-requests", min_requests),
                    ("--load-only", load_only),
                ]),
            ),
        }
    }
}
