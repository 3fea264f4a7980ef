//! Read planning: which requests read a device's whole register map in the fewest round trips.

use super::register_map::{RegisterKind, RegisterSpec};

/// One Modbus read: `count` registers (or bits) of `kind` from `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// `(index into the planned registers, offset of its first address within this request)`,
    /// ordered by address: the register's words are `response[offset..offset + width]`.
    pub items: Vec<(usize, u16)>,
}

/// Plans the reads for `registers` (as validated by [`super::ModbusConfig::from_json`]).
///
/// Registers of one kind are merged into one request when the addresses between them number at
/// most `max_gap` and the request stays within [`RegisterKind::max_read_count`] (125 registers,
/// 2000 bits); reading a few unused addresses is cheaper than another round trip. Registers that
/// share addresses share a request. Requests come ordered by kind, then by start, and requests of
/// one kind never overlap — except inside a chain of mutually overlapping registers longer than
/// one request may read, where no plan without overlap exists.
pub fn plan_reads(registers: &[RegisterSpec], max_gap: u16) -> Vec<ReadRequest> {
    let mut requests = Vec::new();
    for kind in RegisterKind::ALL {
        let mut by_address: Vec<usize> = (0..registers.len())
            .filter(|&index| registers[index].kind == kind)
            .collect();
        // Stable: registers at one address keep their configured order.
        by_address.sort_by_key(|&index| registers[index].address);
        let mut planner = KindPlanner {
            kind,
            registers,
            max_gap: u32::from(max_gap),
            cap: u32::from(kind.max_read_count()),
            pending: None,
            requests: &mut requests,
        };
        for cluster in overlapping_clusters(registers, &by_address) {
            planner.add_cluster(cluster);
        }
        planner.flush();
    }
    requests
}

/// Splits indices sorted by address into runs of registers that share addresses with one
/// another: such a run must be read by one request, or requests would overlap.
fn overlapping_clusters<'a>(
    registers: &[RegisterSpec],
    by_address: &'a [usize],
) -> Vec<&'a [usize]> {
    let mut clusters = Vec::new();
    let mut cluster_begin = 0;
    let mut cluster_last = 0;
    for (position, &index) in by_address.iter().enumerate() {
        let register = &registers[index];
        if position > cluster_begin && u32::from(register.address) > cluster_last {
            clusters.push(&by_address[cluster_begin..position]);
            cluster_begin = position;
        }
        cluster_last = if position == cluster_begin {
            register.last_address()
        } else {
            cluster_last.max(register.last_address())
        };
    }
    if cluster_begin < by_address.len() {
        clusters.push(&by_address[cluster_begin..]);
    }
    clusters
}

/// A request being built: the addresses `start..=last` and the registers it reads.
struct Pending {
    start: u16,
    last: u32,
    members: Vec<usize>,
}

struct KindPlanner<'a> {
    kind: RegisterKind,
    registers: &'a [RegisterSpec],
    max_gap: u32,
    cap: u32,
    pending: Option<Pending>,
    requests: &'a mut Vec<ReadRequest>,
}

impl KindPlanner<'_> {
    fn add_cluster(&mut self, cluster: &[usize]) {
        let Some(&first) = cluster.first() else {
            return;
        };
        let start = self.registers[first].address;
        let last = cluster
            .iter()
            .map(|&index| self.registers[index].last_address())
            .max()
            .unwrap_or_else(|| self.registers[first].last_address());

        if self.fits(start, last, true) {
            self.extend(last, cluster);
        } else if last - u32::from(start) < self.cap {
            self.flush();
            self.pending = Some(Pending {
                start,
                last,
                members: cluster.to_vec(),
            });
        } else {
            // Longer than one request: read it in pieces, register by register.
            self.flush();
            for &index in cluster {
                let register = &self.registers[index];
                if self.fits(register.address, register.last_address(), false) {
                    self.extend(register.last_address(), &[index]);
                } else {
                    self.flush();
                    self.pending = Some(Pending {
                        start: register.address,
                        last: register.last_address(),
                        members: vec![index],
                    });
                }
            }
        }
    }

    /// Whether `start..=last` can join the pending request: close enough (when `check_gap`) and
    /// the merged request stays within the cap.
    fn fits(&self, start: u16, last: u32, check_gap: bool) -> bool {
        let Some(pending) = &self.pending else {
            return false;
        };
        let close_enough = !check_gap || u32::from(start) <= pending.last + 1 + self.max_gap;
        let merged_count = pending.last.max(last) - u32::from(pending.start) + 1;
        close_enough && merged_count <= self.cap
    }

    fn extend(&mut self, last: u32, members: &[usize]) {
        if let Some(pending) = &mut self.pending {
            pending.last = pending.last.max(last);
            pending.members.extend_from_slice(members);
        }
    }

    fn flush(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let items = pending
            .members
            .iter()
            .map(|&index| (index, self.registers[index].address - pending.start))
            .collect();
        self.requests.push(ReadRequest {
            kind: self.kind,
            start: pending.start,
            // At most the cap (2000), unless a lone register overruns address 65535, which
            // validation refuses.
            count: u16::try_from(pending.last - u32::from(pending.start) + 1).unwrap_or(u16::MAX),
            items,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::register_map::ValueType;

    fn spec(kind: RegisterKind, address: u16, value_type: ValueType) -> RegisterSpec {
        RegisterSpec::new(format!("{kind}-{address}"), kind, address, value_type)
    }

    fn holding(address: u16, value_type: ValueType) -> RegisterSpec {
        spec(RegisterKind::Holding, address, value_type)
    }

    fn coil(address: u16) -> RegisterSpec {
        spec(RegisterKind::Coil, address, ValueType::Bool)
    }

    /// `(kind, start, count)` of a request.
    type Span = (RegisterKind, u16, u16);

    fn spans(requests: &[ReadRequest]) -> Vec<Span> {
        requests
            .iter()
            .map(|request| (request.kind, request.start, request.count))
            .collect()
    }

    #[test]
    fn plans_group_merge_and_split_as_expected() {
        use RegisterKind::*;
        use ValueType::*;
        // (what the case shows, registers, max_gap, expected span of each request)
        let cases: Vec<(&str, Vec<RegisterSpec>, u16, Vec<Span>)> = vec![
            ("an empty map needs no reads", vec![], 8, vec![]),
            (
                "contiguous registers share one request",
                vec![holding(0, U16), holding(1, U32), holding(3, F64)],
                0,
                vec![(Holding, 0, 7)],
            ),
            (
                "a gap of exactly max_gap is read through",
                vec![holding(0, U16), holding(9, U16)],
                8,
                vec![(Holding, 0, 10)],
            ),
            (
                "a gap over max_gap splits the request",
                vec![holding(0, U16), holding(10, U16)],
                8,
                vec![(Holding, 0, 1), (Holding, 10, 1)],
            ),
            (
                "max_gap zero merges only adjacent registers",
                vec![holding(0, U16), holding(1, U16), holding(3, U16)],
                0,
                vec![(Holding, 0, 2), (Holding, 3, 1)],
            ),
            (
                "registers listed out of order are read in address order",
                vec![holding(20, U16), holding(1, U16), holding(0, U16)],
                8,
                vec![(Holding, 0, 2), (Holding, 20, 1)],
            ),
            (
                "overlapping registers share one request",
                vec![holding(10, F32), holding(11, U16), holding(10, I16)],
                0,
                vec![(Holding, 10, 2)],
            ),
            (
                "kinds are never merged and come in kind order",
                vec![
                    spec(Discrete, 0, Bool),
                    spec(Input, 0, U16),
                    coil(0),
                    holding(0, U16),
                ],
                8,
                vec![
                    (Holding, 0, 1),
                    (Input, 0, 1),
                    (Coil, 0, 1),
                    (Discrete, 0, 1),
                ],
            ),
            (
                "values ending at the last address are read",
                vec![holding(65535, U16), spec(Input, 65532, U64), coil(65535)],
                8,
                vec![(Holding, 65535, 1), (Input, 65532, 4), (Coil, 65535, 1)],
            ),
            (
                "a register at the last address merges with its neighbour",
                vec![holding(65535, U16), holding(65533, U32)],
                0,
                vec![(Holding, 65533, 3)],
            ),
            (
                "125 registers fit one request",
                (0..125).map(|address| holding(address, U16)).collect(),
                0,
                vec![(Holding, 0, 125)],
            ),
            (
                "the 126th register starts a new request",
                (0..126).map(|address| holding(address, U16)).collect(),
                0,
                vec![(Holding, 0, 125), (Holding, 125, 1)],
            ),
            (
                "a value that would cross the 125 cap moves whole to the next request",
                (0..63).map(|n| holding(2 * n, U32)).collect(),
                0,
                vec![(Holding, 0, 124), (Holding, 124, 2)],
            ),
            (
                "a gap within max_gap that would pass the 125 cap splits the request",
                vec![holding(0, U16), holding(125, U16)],
                1000,
                vec![(Holding, 0, 1), (Holding, 125, 1)],
            ),
            (
                "2000 coils fit one request",
                (0..2000).map(coil).collect(),
                0,
                vec![(Coil, 0, 2000)],
            ),
            (
                "the 2001st coil starts a new request",
                (0..2001).map(coil).collect(),
                0,
                vec![(Coil, 0, 2000), (Coil, 2000, 1)],
            ),
            (
                "a large max_gap reads bits up to the 2000 cap",
                vec![
                    coil(0),
                    coil(1999),
                    spec(Discrete, 0, Bool),
                    spec(Discrete, 2000, Bool),
                ],
                u16::MAX,
                vec![(Coil, 0, 2000), (Discrete, 0, 1), (Discrete, 2000, 1)],
            ),
        ];
        for (case, registers, max_gap, expected) in cases {
            assert_eq!(spans(&plan_reads(&registers, max_gap)), expected, "{case}");
        }
    }

    #[test]
    fn items_give_each_register_its_offset_within_the_request() {
        let registers = vec![
            holding(14, ValueType::U16),
            holding(10, ValueType::F32),
            holding(11, ValueType::U16),
            coil(3),
        ];
        assert_eq!(
            plan_reads(&registers, 8),
            vec![
                ReadRequest {
                    kind: RegisterKind::Holding,
                    start: 10,
                    count: 5,
                    items: vec![(1, 0), (2, 1), (0, 4)],
                },
                ReadRequest {
                    kind: RegisterKind::Coil,
                    start: 3,
                    count: 1,
                    items: vec![(3, 0)],
                },
            ]
        );
    }

    #[test]
    fn a_chain_of_overlapping_registers_longer_than_a_request_is_read_in_pieces() {
        // Each u32 shares a word with the next, so the chain spans 0..=131: 132 registers.
        let registers: Vec<RegisterSpec> = (0..131).map(|n| holding(n, ValueType::U32)).collect();
        let requests = plan_reads(&registers, 0);
        assert_eq!(
            spans(&requests),
            vec![
                (RegisterKind::Holding, 0, 125),
                (RegisterKind::Holding, 124, 8)
            ]
        );
        assert_eq!(requests[0].items.len(), 124);
        assert_eq!(requests[1].items.first(), Some(&(124, 0)));
    }

    /// splitmix64: a small deterministic generator, so the property test needs no new crate and
    /// always checks the same maps.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
            choices[self.below(choices.len() as u64) as usize]
        }
    }

    /// A register map dense enough to merge and overlap often, sometimes at the top of the
    /// address space.
    fn generated_map(prng: &mut Prng) -> Vec<RegisterSpec> {
        let window = prng.pick(&[40_u64, 300, 5000, 65536]);
        let near_the_top = prng.below(4) == 0;
        let count = 1 + prng.below(60);
        (0..count)
            .map(|_| {
                let kind = prng.pick(&RegisterKind::ALL);
                let value_type = if kind.is_bit() {
                    ValueType::Bool
                } else {
                    // Every type but the last, bool.
                    prng.pick(&ValueType::ALL[..8])
                };
                let highest_start = 65536 - u64::from(value_type.width());
                let mut address = prng.below(window);
                if near_the_top {
                    address = 65535 - address;
                }
                let address = u16::try_from(address.min(highest_start)).expect("fits u16");
                spec(kind, address, value_type)
            })
            .collect()
    }

    /// Whether registers of `kind` form a chain of mutually overlapping registers longer than
    /// one request, the one case where requests must overlap.
    fn has_chain_longer_than_a_request(registers: &[RegisterSpec], kind: RegisterKind) -> bool {
        let mut spans: Vec<(u32, u32)> = registers
            .iter()
            .filter(|register| register.kind == kind)
            .map(|register| (u32::from(register.address), register.last_address()))
            .collect();
        spans.sort_unstable();
        let mut chain: Option<(u32, u32)> = None;
        for (first, last) in spans {
            chain = match chain {
                Some((start, reached)) if first <= reached => Some((start, reached.max(last))),
                _ => Some((first, last)),
            };
            if let Some((start, reached)) = chain {
                if reached - start + 1 > u32::from(kind.max_read_count()) {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn generated_maps_are_covered_exactly_within_the_caps_without_overlap() {
        let mut prng = Prng(0x00dd_5eed);
        for map in 0..400 {
            let registers = generated_map(&mut prng);
            let max_gap = prng.pick(&[0, 1, 3, 8, 50, 2000, u16::MAX]);
            let requests = plan_reads(&registers, max_gap);
            let context = format!("map {map} with max_gap {max_gap}: {registers:?}");

            let mut times_read = vec![0; registers.len()];
            for request in &requests {
                let cap = u32::from(request.kind.max_read_count());
                let request_last = u32::from(request.start) + u32::from(request.count) - 1;
                assert!(
                    request.count >= 1 && u32::from(request.count) <= cap,
                    "{context}"
                );
                assert!(request_last <= 65535, "{context}");

                let mut covered: Vec<(u32, u32)> = Vec::new();
                for &(index, offset) in &request.items {
                    let register = &registers[index];
                    times_read[index] += 1;
                    assert_eq!(register.kind, request.kind, "{context}");
                    assert_eq!(register.address, request.start + offset, "{context}");
                    assert!(register.last_address() <= request_last, "{context}");
                    covered.push((u32::from(register.address), register.last_address()));
                }
                // The request reads no more than its registers plus gaps of at most max_gap.
                covered.sort_unstable();
                assert_eq!(
                    covered.first().map(|c| c.0),
                    Some(u32::from(request.start)),
                    "{context}"
                );
                let mut reached = covered[0].1;
                for &(first, last) in &covered[1..] {
                    assert!(first <= reached + 1 + u32::from(max_gap), "{context}");
                    reached = reached.max(last);
                }
                assert_eq!(reached, request_last, "{context}");
            }
            assert!(times_read.iter().all(|&times| times == 1), "{context}");

            for pair in requests.windows(2) {
                let (before, after) = (&pair[0], &pair[1]);
                assert!(before.kind <= after.kind, "{context}");
                if before.kind != after.kind
                    || has_chain_longer_than_a_request(&registers, before.kind)
                {
                    continue;
                }
                let before_last = u32::from(before.start) + u32::from(before.count) - 1;
                let after_last = u32::from(after.start) + u32::from(after.count) - 1;
                assert!(u32::from(after.start) > before_last, "overlap in {context}");
                // Not merged only for a reason: too far apart, or too long together.
                let gap = u32::from(after.start) - before_last - 1;
                let merged_count = after_last - u32::from(before.start) + 1;
                assert!(
                    gap > u32::from(max_gap)
                        || merged_count > u32::from(before.kind.max_read_count()),
                    "needless split in {context}"
                );
            }
        }
    }
}
