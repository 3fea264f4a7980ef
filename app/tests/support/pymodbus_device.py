"""A Modbus TCP device served by pymodbus, an implementation independent of ddms' own.

Usage: python3 pymodbus_device.py PORT

Serves the register map that `tests/it/modbus.rs` configures in ddms, with every value encoded
here, by Python's struct module, from the layout the map declares. Prints "ready PORT" once it
listens, then serves until killed.
"""

import asyncio
import struct
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FORMATS = {
    "u16": ">H",
    "i16": ">h",
    "u32": ">I",
    "i32": ">i",
    "u64": ">Q",
    "i64": ">q",
    "f32": ">f",
    "f64": ">d",
}


def words(value_type, raw, word_order="big", byte_swap=False):
    """The registers a device sends for `raw`: big-endian bytes, least significant word first
    for word_order little, the two bytes of each word exchanged for byte_swap."""
    packed = struct.pack(FORMATS[value_type], raw)
    if byte_swap:
        packed = b"".join(packed[i + 1 : i + 2] + packed[i : i + 1] for i in range(0, len(packed), 2))
    result = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    if word_order == "little":
        result.reverse()
    return result


def block(address, registers):
    return SimData(address=address, values=registers, datatype=DataType.REGISTERS)


# Raw values; the test states the readings ddms must derive from them (after scale and offset).
HOLDING = [
    block(0, words("u16", 4660)),
    block(1, words("i16", -2)),
    block(2, words("u32", 305419896)),
    block(4, words("i32", -123456789, "little")),
    block(6, words("f32", 123.456, "big", True)),
    block(8, words("u64", 2**40 + 5)),
    block(12, words("i64", -1234567890123, "little", True)),
    block(16, words("f64", 1234.5678, "little")),
    block(20, words("u16", 655)),
    # A small gap that ddms reads through (defined, so the merged read succeeds).
    block(21, [0xDEAD, 0xBEEF]),
    block(23, words("i16", -300)),
    # Addresses 24..199 are not defined: this device refuses reads there, so ddms must not
    # merge across this gap.
    block(200, words("u32", 70000, "little", True)),
]
INPUT = [
    block(0, words("f32", -0.15625)),
    block(2, words("u16", 65535)),
    block(3, [7] * 7),
    block(10, words("f64", -98.25, "big", True)),
]
COILS = [
    SimData(address=0, values=[True, False], datatype=DataType.BITS),
    SimData(address=5, values=[True], datatype=DataType.BITS),
]
DISCRETE = [
    SimData(address=3, values=[True, False], datatype=DataType.BITS),
]


async def main():
    port = int(sys.argv[1])
    device = SimDevice(id=0, simdata=(COILS, DISCRETE, HOLDING, INPUT))
    server = ModbusTcpServer(device, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
