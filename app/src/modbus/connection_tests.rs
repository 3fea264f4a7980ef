//! Tests of [`super::ModbusConnection`]: against the tokio-modbus server behind the simulated
//! devices (an independent implementation of the protocol), and against hand-made frames for
//! what a faulty device may send. pymodbus devices are read through it in the integration tests.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::ExceptionCode;

use super::*;
use crate::modbus::simulator::constant_registers;
use crate::modbus::{ModbusSimulator, SimulatedRegister, ValueType};

fn registers() -> Vec<SimulatedRegister> {
    constant_registers(&[
        ("temp", RegisterKind::Holding, 2, ValueType::F32, 21.5),
        ("flow", RegisterKind::Input, 1, ValueType::U16, 417.0),
        ("pump", RegisterKind::Coil, 9, ValueType::Bool, 1.0),
        ("door", RegisterKind::Discrete, 0, ValueType::Bool, 1.0),
    ])
}

async fn connect(addr: std::net::SocketAddr, unit_id: u8) -> ModbusConnection {
    ModbusConnection::new(TcpStream::connect(addr).await.unwrap(), unit_id)
}

#[tokio::test]
async fn reads_every_kind_from_an_independent_server() {
    let simulator = ModbusSimulator::start(registers()).await.unwrap();
    let mut connection = connect(simulator.addr(), 1).await;
    let f32_21_5 = 21.5_f32.to_bits();
    // 11 coils span two bytes: the padding of the second byte is not returned as coils.
    let mut coils = vec![false; 11];
    coils[9] = true;
    for (kind, address, count, expected) in [
        (
            RegisterKind::Holding,
            0,
            5,
            Answer::Words(vec![0, 0, (f32_21_5 >> 16) as u16, f32_21_5 as u16, 0]),
        ),
        (RegisterKind::Input, 1, 1, Answer::Words(vec![417])),
        (RegisterKind::Coil, 0, 11, Answer::Bits(coils)),
        (
            RegisterKind::Discrete,
            0,
            2,
            Answer::Bits(vec![true, false]),
        ),
    ] {
        let answer = connection.read(kind, address, count).await.unwrap();
        assert_eq!(answer.unwrap(), expected, "{kind:?} {address} x{count}");
    }
    // The largest read a frame can carry: 125 registers (250 bytes of data).
    let most = connection
        .read(RegisterKind::Holding, 0, 125)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(most.len(), 125);
    assert_eq!(simulator.requests(), 5);
    assert_eq!(
        simulator.connections(),
        1,
        "one connection served every read"
    );
}

#[tokio::test]
async fn an_exception_is_the_devices_answer_and_the_connection_goes_on() {
    let simulator = ModbusSimulator::start(registers()).await.unwrap();
    simulator.set_exception(RegisterKind::Holding, 3, ExceptionCode::IllegalDataAddress);
    let mut connection = connect(simulator.addr(), 1).await;
    assert_eq!(
        connection.read(RegisterKind::Holding, 2, 2).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert!(connection
        .read(RegisterKind::Holding, 0, 2)
        .await
        .unwrap()
        .is_ok());
}

/// A device that answers the first request it receives with `answer` (built from the
/// request's bytes), then holds the connection open until the client is done (`hold_open`: a
/// fault must come from the frame, not from the connection closing) or closes it at once.
async fn device_answering(answer: Answering, hold_open: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 12];
        stream.read_exact(&mut request).await.unwrap();
        stream.write_all(&answer(&request)).await.unwrap();
        if hold_open {
            let mut rest = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
        }
    });
    addr
}

/// The frame a correct device would send: the request's transaction and unit, then `pdu`.
fn frame(request: &[u8; 12], protocol: u16, pdu: &[u8]) -> Vec<u8> {
    let mut frame = request[..2].to_vec();
    frame.extend_from_slice(&protocol.to_be_bytes());
    frame.extend_from_slice(&u16::try_from(pdu.len() + 1).unwrap().to_be_bytes());
    frame.push(request[6]);
    frame.extend_from_slice(pdu);
    frame
}

/// Builds a device's answer from the request it received.
type Answering = fn(&[u8; 12]) -> Vec<u8>;

async fn first_answer(
    answer: Answering,
    kind: RegisterKind,
    count: u16,
) -> Result<Result<Answer, ExceptionCode>, String> {
    let addr = device_answering(answer, true).await;
    let mut connection = connect(addr, 7).await;
    tokio::time::timeout(Duration::from_secs(30), connection.read(kind, 100, count))
        .await
        .expect("the client gave up on the frame instead of hanging")
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_request_is_a_read_of_the_right_function_unit_address_and_count() {
    let addr = device_answering(
        |request| {
            assert_eq!(
                request[2..],
                [0, 0, 0, 6, 7, 0x04, 0, 100, 0, 3],
                "protocol 0, length 6, unit 7, function 4, start 100, count 3"
            );
            frame(request, 0, &[0x04, 6, 0, 1, 0, 2, 0, 3])
        },
        true,
    )
    .await;
    let mut connection = connect(addr, 7).await;
    assert_eq!(
        connection
            .read(RegisterKind::Input, 100, 3)
            .await
            .unwrap()
            .unwrap(),
        Answer::Words(vec![1, 2, 3])
    );
}

#[tokio::test]
async fn a_short_answer_is_returned_short_for_the_poller_to_refuse() {
    let answer = first_answer(
        |request| frame(request, 0, &[0x03, 2, 0, 9]),
        RegisterKind::Holding,
        4,
    )
    .await;
    assert_eq!(answer, Ok(Ok(Answer::Words(vec![9]))));
}

#[tokio::test]
async fn frames_that_break_the_protocol_are_errors_naming_what_is_wrong() {
    let cases: [(Answering, RegisterKind, &str); 8] = [
        (
            |request| frame(request, 1, &[0x03, 2, 0, 1]),
            RegisterKind::Holding,
            "protocol id is 1",
        ),
        (
            |request| {
                let mut answer = frame(request, 0, &[0x03, 2, 0, 1]);
                answer[0] ^= 0xff;
                answer
            },
            RegisterKind::Holding,
            "while waiting for 0",
        ),
        (
            |request| {
                let mut answer = frame(request, 0, &[0x03, 2, 0, 1]);
                answer[6] = 8;
                answer
            },
            RegisterKind::Holding,
            "from unit 8",
        ),
        (
            |request| {
                let mut answer = frame(request, 0, &[0x03, 2, 0, 1]);
                answer[4..6].copy_from_slice(&300u16.to_be_bytes());
                answer
            },
            RegisterKind::Holding,
            "length field says 300",
        ),
        (
            |request| frame(request, 0, &[0x04, 2, 0, 1]),
            RegisterKind::Holding,
            "function code 0x04 to a request with 0x03",
        ),
        (
            |request| frame(request, 0, &[0x03, 4, 0, 1]),
            RegisterKind::Holding,
            "byte count says 4, it holds 2",
        ),
        (
            |request| frame(request, 0, &[0x03, 3, 0, 1, 2]),
            RegisterKind::Holding,
            "3 bytes cannot be 16-bit registers",
        ),
        (
            |request| frame(request, 0, &[0x81, 2, 3]),
            RegisterKind::Coil,
            "one code byte, not 2",
        ),
    ];
    for (answer, kind, expected) in cases {
        let error = first_answer(answer, kind, 1).await.expect_err(&format!(
            "a frame that should fail with {expected:?} was accepted"
        ));
        assert!(
            error.contains(expected),
            "{error:?} should say {expected:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_closed_mid_frame_is_an_error() {
    // The connection closes two bytes before the frame's end.
    let addr = device_answering(
        |request| frame(request, 0, &[0x03, 4, 0, 1, 0, 2])[..9].to_vec(),
        false,
    )
    .await;
    let mut connection = connect(addr, 7).await;
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        connection.read(RegisterKind::Holding, 100, 2),
    )
    .await
    .expect("a closed connection ends the read");
    assert!(read.is_err(), "{read:?}");
}
