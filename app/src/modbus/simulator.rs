//! A simulated Modbus TCP device, for tests and `ddms serve --demo`: a tokio-modbus server whose
//! registers follow waveforms over time, and which can be stopped and started again on the same
//! port, made to answer slowly or late, and made to answer exceptions for chosen addresses.
//!
//! The register map is described with the same [`RegisterSpec`]s as a device's configuration:
//! the simulator encodes each waveform's value so that ddms, configured with the same specs,
//! reads exactly that value (up to the precision of the register's type). Addresses no register
//! covers read as zero.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::{ExceptionCode, Request, Response};

use super::register_map::{RegisterKind, RegisterSpec, ValueType, WordOrder};
use crate::locks::MutexExt;

/// How a simulated register's value evolves, in the register's engineering units (the value
/// ddms stores, after scale and offset).
#[derive(Debug, Clone, PartialEq)]
pub enum Waveform {
    Constant(f64),
    /// From `from` to `to` over `period`, then again from `from`.
    Ramp {
        from: f64,
        to: f64,
        period: Duration,
    },
    Sine {
        mean: f64,
        amplitude: f64,
        period: Duration,
    },
}

impl Waveform {
    /// The value `elapsed` after the simulator started.
    pub fn value_at(&self, elapsed: Duration) -> f64 {
        match *self {
            Waveform::Constant(value) => value,
            Waveform::Ramp { from, to, period } => from + (to - from) * phase(elapsed, period),
            Waveform::Sine {
                mean,
                amplitude,
                period,
            } => mean + amplitude * (std::f64::consts::TAU * phase(elapsed, period)).sin(),
        }
    }
}

/// How far into its period `elapsed` is, in `[0, 1)`.
fn phase(elapsed: Duration, period: Duration) -> f64 {
    let period = period.as_secs_f64();
    if period <= 0.0 {
        return 0.0;
    }
    (elapsed.as_secs_f64() % period) / period
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedRegister {
    pub spec: RegisterSpec,
    pub waveform: Waveform,
}

impl SimulatedRegister {
    pub fn new(spec: RegisterSpec, waveform: Waveform) -> Self {
        SimulatedRegister { spec, waveform }
    }
}

/// What a register holds on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Words(Vec<u16>),
    Bit(bool),
}

impl Encoded {
    /// The words of a register that holds words; none of one that holds a bit.
    fn words(self) -> Vec<u16> {
        match self {
            Encoded::Words(words) => words,
            Encoded::Bit(_) => Vec::new(),
        }
    }

    /// The bit of a register that holds one; none of one that holds words.
    fn bit(self) -> Option<bool> {
        match self {
            Encoded::Bit(bit) => Some(bit),
            Encoded::Words(_) => None,
        }
    }
}

/// The inverse of [`super::decode`]: the words (or bit) a device sends so that `spec` decodes to
/// `value`. Integer types round to the nearest representable raw value and saturate at the
/// type's range.
pub fn encode(spec: &RegisterSpec, value: f64) -> Encoded {
    let raw = (value - spec.offset) / spec.scale;
    let bytes: Vec<u8> = match spec.value_type {
        ValueType::Bool => return Encoded::Bit(raw.round() != 0.0),
        // `as` from f64 saturates at the target range, which is the documented behaviour.
        ValueType::U16 => (raw.round() as u16).to_be_bytes().to_vec(),
        ValueType::I16 => (raw.round() as i16).to_be_bytes().to_vec(),
        ValueType::U32 => (raw.round() as u32).to_be_bytes().to_vec(),
        ValueType::I32 => (raw.round() as i32).to_be_bytes().to_vec(),
        ValueType::U64 => (raw.round() as u64).to_be_bytes().to_vec(),
        ValueType::I64 => (raw.round() as i64).to_be_bytes().to_vec(),
        ValueType::F32 => (raw as f32).to_be_bytes().to_vec(),
        ValueType::F64 => raw.to_be_bytes().to_vec(),
    };
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    if spec.word_order == WordOrder::Little {
        words.reverse();
    }
    if spec.byte_swap {
        for word in &mut words {
            *word = word.swap_bytes();
        }
    }
    Encoded::Words(words)
}

/// Behaviour switched on and off by tests.
#[derive(Debug, Default)]
struct Behaviour {
    /// Added before every answer.
    delay: Duration,
    /// Delays for the next requests, one each, replacing `delay`.
    late: VecDeque<Duration>,
    exceptions: HashMap<(RegisterKind, u16), ExceptionCode>,
}

struct Shared {
    registers: Mutex<Vec<SimulatedRegister>>,
    behaviour: Mutex<Behaviour>,
    started: Instant,
    requests: AtomicU64,
    connections: AtomicU64,
    open_connections: AtomicUsize,
}

impl Shared {
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        match *request {
            Request::ReadHoldingRegisters(start, count) => self
                .read(RegisterKind::Holding, start, count, Encoded::words)
                .map(Response::ReadHoldingRegisters),
            Request::ReadInputRegisters(start, count) => self
                .read(RegisterKind::Input, start, count, Encoded::words)
                .map(Response::ReadInputRegisters),
            Request::ReadCoils(start, count) => self
                .read(RegisterKind::Coil, start, count, Encoded::bit)
                .map(Response::ReadCoils),
            Request::ReadDiscreteInputs(start, count) => self
                .read(RegisterKind::Discrete, start, count, Encoded::bit)
                .map(Response::ReadDiscreteInputs),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn check(&self, kind: RegisterKind, start: u16, count: u16) -> Result<(), ExceptionCode> {
        if count == 0 || count > kind.max_read_count() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if u32::from(start) + u32::from(count) > 65_536 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let behaviour = self.behaviour.lock_unpoisoned();
        let range = u32::from(start)..u32::from(start) + u32::from(count);
        match behaviour
            .exceptions
            .iter()
            .find(|((k, address), _)| *k == kind && range.contains(&u32::from(*address)))
        {
            Some((_, &exception)) => Err(exception),
            None => Ok(()),
        }
    }

    /// Every register of `kind` encoded at this instant, with its first address.
    fn image(&self, kind: RegisterKind) -> Vec<(u16, Encoded)> {
        let elapsed = self.started.elapsed();
        self.registers
            .lock_unpoisoned()
            .iter()
            .filter(|register| register.spec.kind == kind)
            .map(|register| {
                let value = register.waveform.value_at(elapsed);
                (register.spec.address, encode(&register.spec, value))
            })
            .collect()
    }

    /// `count` values of registers of `kind` from `start`: each register's `values` (words, or
    /// its bit) laid out from its address; an address no register covers reads as the default.
    fn read<T, I>(
        &self,
        kind: RegisterKind,
        start: u16,
        count: u16,
        values: fn(Encoded) -> I,
    ) -> Result<Vec<T>, ExceptionCode>
    where
        T: Clone + Default,
        I: IntoIterator<Item = T>,
    {
        self.check(kind, start, count)?;
        let mut out = vec![T::default(); usize::from(count)];
        for (address, encoded) in self.image(kind) {
            for (i, value) in values(encoded).into_iter().enumerate() {
                let at = usize::from(address) + i;
                if let Some(slot) = at
                    .checked_sub(usize::from(start))
                    .and_then(|offset| out.get_mut(offset))
                {
                    *slot = value;
                }
            }
        }
        Ok(out)
    }
}

struct SimulatedService {
    shared: Arc<Shared>,
}

impl tokio_modbus::server::Service for SimulatedService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let delay = {
            let mut behaviour = self.shared.behaviour.lock_unpoisoned();
            let default = behaviour.delay;
            behaviour.late.pop_front().unwrap_or(default)
        };
        let answer = self.shared.answer(&request);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// A client connection, counted while open so that [`ModbusSimulator::stop`] can wait until
/// every connection is really closed.
struct CountedStream {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl CountedStream {
    fn new(inner: TcpStream, shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        shared.open_connections.fetch_add(1, Ordering::SeqCst);
        CountedStream { inner, shared }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for CountedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A running (or stopped) simulated device. Dropping it stops it.
pub struct ModbusSimulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// How long [`ModbusSimulator::stop`] waits for connections to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl ModbusSimulator {
    /// Starts a device on a free port of 127.0.0.1.
    pub async fn start(registers: Vec<SimulatedRegister>) -> io::Result<ModbusSimulator> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), registers).await
    }

    /// Starts a device listening on `addr`.
    pub async fn bind(
        addr: SocketAddr,
        registers: Vec<SimulatedRegister>,
    ) -> io::Result<ModbusSimulator> {
        let listener = listen(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            registers: Mutex::new(registers),
            behaviour: Mutex::new(Behaviour::default()),
            started: Instant::now(),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open_connections: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(ModbusSimulator {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn is_running(&self) -> bool {
        self.server.lock_unpoisoned().is_some()
    }

    /// Closes the listener and every open connection, as a device that is switched off:
    /// clients see their connection reset and new connections refused. Returns once the
    /// connections are closed.
    pub async fn stop(&self) {
        let server = self.server.lock_unpoisoned().take();
        if let Some(server) = server {
            server.abort();
            let _ = server.await;
        }
        // Aborting the server cancels its per-connection tasks; they close their sockets on
        // their next wake-up, which the cancellation itself triggers.
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Listens again on the same address, with the same registers and behaviour.
    pub async fn restart(&self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let listener = listen(self.addr)?;
        let server = tokio::spawn(serve(listener, self.shared.clone()));
        *self.server.lock_unpoisoned() = Some(server);
        Ok(())
    }

    /// Delays every answer by `delay` (zero: answer at once).
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.behaviour.lock_unpoisoned().delay = delay;
    }

    /// Delays the answers to the next `requests` requests by `delay` each: with a delay longer
    /// than the client's timeout, the answer arrives after the client gave up.
    pub fn answer_late(&self, requests: usize, delay: Duration) {
        self.shared
            .behaviour
            .lock_unpoisoned()
            .late
            .extend(std::iter::repeat_n(delay, requests));
    }

    /// Answers `exception` to every read that includes `address` of `kind`.
    pub fn set_exception(&self, kind: RegisterKind, address: u16, exception: ExceptionCode) {
        self.shared
            .behaviour
            .lock_unpoisoned()
            .exceptions
            .insert((kind, address), exception);
    }

    pub fn clear_exceptions(&self) {
        self.shared.behaviour.lock_unpoisoned().exceptions.clear();
    }

    /// Changes the waveform of the register reporting `metric`; false when there is none.
    pub fn set_waveform(&self, metric: &str, waveform: Waveform) -> bool {
        let mut registers = self.shared.registers.lock_unpoisoned();
        match registers.iter_mut().find(|r| r.spec.metric == metric) {
            Some(register) => {
                register.waveform = waveform;
                true
            }
            None => false,
        }
    }

    /// Requests received since the simulator was created (across restarts).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted since the simulator was created (across restarts).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }
}

impl Drop for ModbusSimulator {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock_unpoisoned().take() {
            server.abort();
        }
    }
}

/// A listener that can be bound again on the same port right after it closed.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, _peer: SocketAddr| {
        let shared = shared.clone();
        async move {
            let service = SimulatedService {
                shared: shared.clone(),
            };
            Ok(Some((service, CountedStream::new(stream, shared))))
        }
    };
    let on_process_error = |e: io::Error| {
        // A client that went away mid-answer (it timed out): expected in tests.
        tracing::debug!(error = %e, "simulated Modbus device: connection ended");
    };
    if let Err(e) = server.serve(&on_connected, on_process_error).await {
        tracing::warn!(error = %e, "simulated Modbus device stopped accepting connections");
    }
}

/// Registers of constant values, each `(metric, kind, address, type, value)`: the devices the
/// unit tests read.
#[cfg(test)]
pub(crate) fn constant_registers(
    registers: &[(&str, RegisterKind, u16, ValueType, f64)],
) -> Vec<SimulatedRegister> {
    registers
        .iter()
        .map(|&(metric, kind, address, value_type, value)| {
            SimulatedRegister::new(
                RegisterSpec::new(metric, kind, address, value_type),
                Waveform::Constant(value),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tokio_modbus::client::{tcp, Reader};

    use super::*;
    use crate::modbus::decode;

    #[test]
    fn encoding_is_the_inverse_of_decoding_for_every_type_and_layout() {
        let values = [0.0, 1.0, -2.0, 123.0, 40_000.5, -123_456.0];
        for value_type in ValueType::ALL {
            if value_type == ValueType::Bool {
                continue;
            }
            for word_order in WordOrder::ALL {
                for byte_swap in [false, true] {
                    let spec = RegisterSpec {
                        word_order,
                        byte_swap,
                        scale: 0.5,
                        offset: 10.0,
                        ..RegisterSpec::new("m", RegisterKind::Holding, 0, value_type)
                    };
                    for value in values {
                        let Encoded::Words(words) = encode(&spec, value) else {
                            panic!("{value_type} encodes to words");
                        };
                        let decoded = decode(&spec, &words).expect("decodes");
                        // Integers saturate at their range; the rest must come back exactly.
                        let raw = (value - 10.0) / 0.5;
                        let representable = match value_type {
                            ValueType::U16 => (0.0..=65_535.0).contains(&raw),
                            ValueType::I16 => (-32_768.0..=32_767.0).contains(&raw),
                            ValueType::U32 | ValueType::U64 => raw >= 0.0,
                            _ => true,
                        };
                        if representable {
                            assert_eq!(
                                decoded, value,
                                "{value_type} {word_order} swap={byte_swap} {value}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bits_encode_from_the_scaled_value() {
        let spec = RegisterSpec::new("pump", RegisterKind::Coil, 3, ValueType::Bool);
        assert_eq!(encode(&spec, 1.0), Encoded::Bit(true));
        assert_eq!(encode(&spec, 0.0), Encoded::Bit(false));
        let inverted = RegisterSpec {
            scale: -1.0,
            offset: 1.0,
            ..spec
        };
        assert_eq!(encode(&inverted, 1.0), Encoded::Bit(false));
    }

    #[test]
    fn waveforms_follow_their_period() {
        let ramp = Waveform::Ramp {
            from: 10.0,
            to: 20.0,
            period: Duration::from_secs(10),
        };
        assert_eq!(ramp.value_at(Duration::ZERO), 10.0);
        assert_eq!(ramp.value_at(Duration::from_secs(5)), 15.0);
        assert_eq!(ramp.value_at(Duration::from_secs(12)), 12.0);
        let sine = Waveform::Sine {
            mean: 50.0,
            amplitude: 10.0,
            period: Duration::from_secs(4),
        };
        assert_eq!(sine.value_at(Duration::ZERO), 50.0);
        assert!((sine.value_at(Duration::from_secs(1)) - 60.0).abs() < 1e-9);
        assert!((sine.value_at(Duration::from_secs(3)) - 40.0).abs() < 1e-9);
        assert_eq!(
            Waveform::Constant(7.5).value_at(Duration::from_secs(99)),
            7.5
        );
    }

    fn registers() -> Vec<SimulatedRegister> {
        constant_registers(&[
            ("temp", RegisterKind::Holding, 2, ValueType::F32, 21.5),
            ("pump", RegisterKind::Coil, 1, ValueType::Bool, 1.0),
        ])
    }

    #[tokio::test]
    async fn a_client_reads_the_simulated_registers_and_unmapped_addresses_as_zero() {
        let simulator = ModbusSimulator::start(registers()).await.unwrap();
        let mut client = tcp::connect(simulator.addr()).await.unwrap();
        let words = client.read_holding_registers(0, 5).await.unwrap().unwrap();
        let f32_21_5 = 21.5_f32.to_bits();
        assert_eq!(words, [0, 0, (f32_21_5 >> 16) as u16, f32_21_5 as u16, 0]);
        let coils = client.read_coils(0, 3).await.unwrap().unwrap();
        assert_eq!(coils, [false, true, false]);
        assert_eq!(simulator.requests(), 2);
    }

    #[tokio::test]
    async fn chosen_addresses_answer_an_exception_and_others_do_not() {
        let simulator = ModbusSimulator::start(registers()).await.unwrap();
        simulator.set_exception(RegisterKind::Holding, 3, ExceptionCode::IllegalDataAddress);
        let mut client = tcp::connect(simulator.addr()).await.unwrap();
        assert_eq!(
            client.read_holding_registers(2, 2).await.unwrap(),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert!(client.read_holding_registers(0, 2).await.unwrap().is_ok());
        assert!(client.read_input_registers(3, 1).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_stopped_device_refuses_connections_and_restarts_on_the_same_port() {
        let simulator = ModbusSimulator::start(registers()).await.unwrap();
        let addr = simulator.addr();
        let mut client = tcp::connect(addr).await.unwrap();
        assert!(client.read_coils(1, 1).await.unwrap().is_ok());
        simulator.stop().await;
        assert_eq!(simulator.open_connections(), 0);
        assert!(
            client.read_coils(1, 1).await.is_err(),
            "open connection closed"
        );
        assert!(tcp::connect(addr).await.is_err(), "new connections refused");
        simulator.restart().await.unwrap();
        assert_eq!(simulator.addr(), addr);
        let mut client = tcp::connect(addr).await.unwrap();
        assert_eq!(client.read_coils(1, 1).await.unwrap(), Ok(vec![true]));
    }
}
