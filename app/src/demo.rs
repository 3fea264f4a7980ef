//! `ddms serve --demo`: simulated devices so a first run shows live data with nothing else
//! installed. Modbus devices are in-process simulators on free loopback ports; the devices are
//! created (or re-pointed at this run's ports) in group `demo`, and a viewer token is put in the
//! URL fragment the service prints, so the live page opens signed in without the token ever
//! reaching a server log.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::auth::{generate_api_token, hash_api_token};
use crate::modbus::register_map::{RegisterKind, RegisterSpec, ValueType};
use crate::modbus::simulator::{ModbusSimulator, SimulatedRegister, Waveform};
use crate::store::{NewApiToken, NewDevice, Protocol, Role, Store, StoreError};

pub const DEMO_GROUP: &str = "demo";

/// Keeps the simulators running; dropping it stops them.
pub struct Demo {
    _simulators: Vec<ModbusSimulator>,
    /// A viewer token for the printed URL.
    pub viewer_token: String,
    stop_mqtt: tokio_util::sync::CancellationToken,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop_mqtt.cancel();
    }
}

/// Names of the simulated MQTT devices; they register themselves at every start.
const MQTT_DEVICES: [&str; 2] = ["demo-greenhouse-1", "demo-greenhouse-2"];

fn register(
    metric: &str,
    kind: RegisterKind,
    address: u16,
    value_type: ValueType,
    unit: &str,
) -> RegisterSpec {
    let mut spec = RegisterSpec::new(metric, kind, address, value_type);
    spec.unit = (!unit.is_empty()).then(|| unit.to_string());
    spec
}

/// The simulated plant: name, registers with their waveforms, poll interval.
fn plant() -> Vec<(&'static str, Vec<SimulatedRegister>, u64)> {
    let minute = Duration::from_secs(60);
    vec![
        (
            "demo-boiler-1",
            vec![
                SimulatedRegister::new(
                    register(
                        "temperature",
                        RegisterKind::Holding,
                        0,
                        ValueType::F32,
                        "°C",
                    ),
                    Waveform::Sine {
                        mean: 72.0,
                        amplitude: 6.0,
                        period: minute,
                    },
                ),
                SimulatedRegister::new(
                    register("pressure", RegisterKind::Holding, 2, ValueType::U16, "kPa"),
                    Waveform::Sine {
                        mean: 310.0,
                        amplitude: 25.0,
                        period: minute * 3,
                    },
                ),
            ],
            1000,
        ),
        (
            "demo-pump-2",
            vec![
                SimulatedRegister::new(
                    register("flow", RegisterKind::Input, 10, ValueType::F32, "m³/h"),
                    Waveform::Ramp {
                        from: 12.0,
                        to: 18.0,
                        period: minute * 2,
                    },
                ),
                SimulatedRegister::new(
                    register("running", RegisterKind::Coil, 0, ValueType::Bool, ""),
                    Waveform::Constant(1.0),
                ),
            ],
            1000,
        ),
        (
            "demo-meter-3",
            vec![SimulatedRegister::new(
                register("energy", RegisterKind::Holding, 100, ValueType::U32, "kWh"),
                Waveform::Ramp {
                    from: 1000.0,
                    to: 1600.0,
                    period: minute * 10,
                },
            )],
            2000,
        ),
    ]
}

/// Starts the simulators and makes the store's demo devices point at them.
pub async fn start(store: &dyn Store) -> anyhow::Result<Demo> {
    let group_id = match store
        .list_groups()
        .await?
        .into_iter()
        .find(|g| g.name == DEMO_GROUP)
    {
        Some(group) => group.id,
        None => store.create_group(DEMO_GROUP).await?.id,
    };
    let existing = store.list_devices().await?;
    let mut simulators = Vec::new();
    for (name, registers, interval_ms) in plant() {
        let specs: Vec<RegisterSpec> = registers.iter().map(|r| r.spec.clone()).collect();
        let simulator = ModbusSimulator::start(registers)
            .await
            .context("cannot start a demo Modbus device")?;
        let device = NewDevice {
            name: name.to_string(),
            protocol: Protocol::Modbus,
            group_id: Some(group_id),
            config: json!({
                "host": "127.0.0.1", "port": simulator.port(), "unit_id": 1,
                "poll_interval_ms": interval_ms, "registers": specs,
            }),
            enabled: true,
        };
        // Validated like any API input, so the demo cannot store what the API would refuse.
        crate::modbus::ModbusConfig::from_json(&device.config)
            .map_err(|errors| anyhow::anyhow!("demo register map is invalid: {errors:?}"))?;
        match existing.iter().find(|d| d.name == name) {
            Some(found) => {
                store.update_device(found.id, &device).await?;
            }
            None => match store.create_device(&device).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
        simulators.push(simulator);
    }
    let viewer_token = generate_api_token();
    store
        .create_api_token(&NewApiToken {
            name: format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")),
            token_hash: hash_api_token(&viewer_token),
            role: Role::Viewer,
        })
        .await?;
    Ok(Demo {
        _simulators: simulators,
        viewer_token,
        stop_mqtt: tokio_util::sync::CancellationToken::new(),
    })
}

impl Demo {
    /// Starts the simulated MQTT devices once the service answers at `base_url`: each removes
    /// its previous registration, registers itself with `provisioning_token` like a real device,
    /// and publishes telemetry and heartbeats.
    pub fn start_mqtt(
        &self,
        store: std::sync::Arc<dyn Store>,
        base_url: String,
        provisioning_token: String,
    ) {
        let stop = self.stop_mqtt.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while client
                .get(format!("{base_url}/health"))
                .send()
                .await
                .is_err()
            {
                if std::time::Instant::now() > deadline || stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let existing = store.list_devices().await.unwrap_or_default();
            for (i, name) in MQTT_DEVICES.iter().enumerate() {
                if let Some(old) = existing.iter().find(|d| d.name == *name) {
                    let _ = store.delete_device(old.id).await;
                }
                let registration = match crate::mqtt::simulator::register(
                    &base_url,
                    &provisioning_token,
                    name,
                    Some(DEMO_GROUP),
                )
                .await
                {
                    Ok(registration) => registration,
                    Err(e) => {
                        tracing::warn!(error = %e, "demo MQTT device could not register");
                        continue;
                    }
                };
                let metrics = vec![
                    crate::mqtt::simulator::SimulatedMetric {
                        name: "temperature".into(),
                        waveform: Waveform::Sine {
                            mean: 24.0 + i as f64,
                            amplitude: 3.0,
                            period: Duration::from_secs(90),
                        },
                    },
                    crate::mqtt::simulator::SimulatedMetric {
                        name: "humidity".into(),
                        waveform: Waveform::Sine {
                            mean: 60.0,
                            amplitude: 8.0,
                            period: Duration::from_secs(150),
                        },
                    },
                ];
                tokio::spawn(crate::mqtt::simulator::run(
                    registration,
                    metrics,
                    Duration::from_secs(2),
                    Duration::from_secs(10),
                    stop.clone(),
                ));
            }
        });
    }
}
