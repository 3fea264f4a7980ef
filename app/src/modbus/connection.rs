//! One Modbus TCP connection to a device, for the four reads a poller makes (coils, discrete
//! inputs, holding and input registers), holding a single frame buffer of Modbus' largest frame.
//!
//! Why not tokio-modbus' client: its TCP transport keeps a tokio-util `Framed` per connection,
//! 8 KiB to read and 8 KiB to write, for frames of at most 260 bytes, and gives no way to size
//! them. With one connection per device that was 16 of the ~25 KiB a polled device costs, or
//! 160 MiB at 10,000 devices (docs/benchmarks.md, "Attribution"). The protocol part of the four
//! reads is small and fixed by the specification (MODBUS Messaging on TCP/IP Implementation
//! Guide v1.0b, MODBUS Application Protocol v1.1b3); tokio-modbus still provides the types
//! (exception codes, errors) and the simulated devices, and the tests read its server and
//! pymodbus, two independent implementations, through this client.
//!
//! A connection is used for one request at a time and never again after a failure or a
//! timeout (the poller drops it), so a late answer to an abandoned request cannot be taken for
//! the answer to the next one; the transaction id is checked all the same.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_modbus::ExceptionCode;

use super::register_map::RegisterKind;

/// The MBAP header: transaction id, protocol id (0), length of what follows, unit id.
const HEADER_LEN: usize = 7;
/// A whole frame: the header and a PDU of at most 253 bytes.
const MAX_FRAME_LEN: usize = 260;
/// A read request's PDU: function code, start address, quantity.
const READ_REQUEST_PDU_LEN: u16 = 5;

/// What a read returned: register words or bits, as many as the device sent (the caller
/// checks the count against its request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

impl Answer {
    pub fn len(&self) -> usize {
        match self {
            Answer::Words(words) => words.len(),
            Answer::Bits(bits) => bits.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open connection to one device (one unit id behind one TCP endpoint).
#[derive(Debug)]
pub struct ModbusConnection {
    stream: TcpStream,
    unit_id: u8,
    next_transaction: u16,
    frame: Vec<u8>,
}

impl ModbusConnection {
    pub fn new(stream: TcpStream, unit_id: u8) -> Self {
        ModbusConnection {
            stream,
            unit_id,
            next_transaction: 0,
            frame: Vec::with_capacity(MAX_FRAME_LEN),
        }
    }

    /// Reads `count` items of `kind` from `start`: the device's answer, its exception, or an
    /// I/O or protocol error (after which the connection must not be used again).
    pub async fn read(
        &mut self,
        kind: RegisterKind,
        start: u16,
        count: u16,
    ) -> Result<Result<Answer, ExceptionCode>, tokio_modbus::Error> {
        let function = function_code(kind);
        let transaction = self.next_transaction;
        self.next_transaction = transaction.wrapping_add(1);

        self.frame.clear();
        self.frame.extend_from_slice(&transaction.to_be_bytes());
        self.frame.extend_from_slice(&0u16.to_be_bytes());
        self.frame
            .extend_from_slice(&(1 + READ_REQUEST_PDU_LEN).to_be_bytes());
        self.frame.push(self.unit_id);
        self.frame.push(function);
        self.frame.extend_from_slice(&start.to_be_bytes());
        self.frame.extend_from_slice(&count.to_be_bytes());
        self.stream.write_all(&self.frame).await?;

        let pdu = self.receive(transaction).await?;
        Ok(parse_read_answer(kind, function, count, pdu)?)
    }

    /// Reads one whole frame and returns its PDU after checking the header.
    async fn receive(&mut self, transaction: u16) -> io::Result<&[u8]> {
        self.frame.resize(HEADER_LEN, 0);
        self.stream.read_exact(&mut self.frame).await?;
        let header = &self.frame[..HEADER_LEN];
        let answered = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit_id = header[6];
        if protocol != 0 {
            return Err(invalid(format!(
                "the answer's protocol id is {protocol}, not Modbus' 0"
            )));
        }
        // The length counts the unit id and a PDU of 2 to 253 bytes.
        if !(3..=MAX_FRAME_LEN - HEADER_LEN + 1).contains(&length) {
            return Err(invalid(format!(
                "the answer's length field says {length} bytes; a Modbus frame has 3 to 254"
            )));
        }
        if answered != transaction {
            return Err(invalid(format!(
                "answer to transaction {answered} while waiting for {transaction}"
            )));
        }
        if unit_id != self.unit_id {
            return Err(invalid(format!(
                "answer from unit {unit_id} to a request for unit {}",
                self.unit_id
            )));
        }
        self.frame.resize(HEADER_LEN + length - 1, 0);
        self.stream
            .read_exact(&mut self.frame[HEADER_LEN..])
            .await?;
        Ok(&self.frame[HEADER_LEN..])
    }
}

fn function_code(kind: RegisterKind) -> u8 {
    match kind {
        RegisterKind::Coil => 0x01,
        RegisterKind::Discrete => 0x02,
        RegisterKind::Holding => 0x03,
        RegisterKind::Input => 0x04,
    }
}

/// The answer a read request's PDU holds: data, an exception, or what is wrong with it.
fn parse_read_answer(
    kind: RegisterKind,
    function: u8,
    count: u16,
    pdu: &[u8],
) -> io::Result<Result<Answer, ExceptionCode>> {
    let (&answered, rest) = pdu
        .split_first()
        .ok_or_else(|| invalid("empty answer".to_owned()))?;
    if answered == function | 0x80 {
        return match rest {
            [code] => Ok(Err(ExceptionCode::new(*code))),
            _ => Err(invalid(format!(
                "an exception answer holds one code byte, not {}",
                rest.len()
            ))),
        };
    }
    if answered != function {
        return Err(invalid(format!(
            "answer with function code {answered:#04x} to a request with {function:#04x}"
        )));
    }
    let (&byte_count, data) = rest
        .split_first()
        .ok_or_else(|| invalid("answer without a byte count".to_owned()))?;
    if usize::from(byte_count) != data.len() {
        return Err(invalid(format!(
            "the answer's byte count says {byte_count}, it holds {}",
            data.len()
        )));
    }
    Ok(Ok(match kind {
        RegisterKind::Holding | RegisterKind::Input => {
            if data.len() % 2 != 0 {
                return Err(invalid(format!(
                    "{} bytes cannot be 16-bit registers",
                    data.len()
                )));
            }
            Answer::Words(
                data.chunks_exact(2)
                    .map(|word| u16::from_be_bytes([word[0], word[1]]))
                    .collect(),
            )
        }
        // Bits are packed eight to a byte, the first in the lowest bit; the last byte is
        // padded with zeros, which are not bits the device sent.
        RegisterKind::Coil | RegisterKind::Discrete => Answer::Bits(
            data.iter()
                .flat_map(|byte| (0..8).map(move |bit| byte & (1 << bit) != 0))
                .take(usize::from(count))
                .collect(),
        ),
    }))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
