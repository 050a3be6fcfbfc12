//! Property tests: whatever a guest puts in the rings (descriptor tables
//! with arbitrary addresses, lengths, flags and links, arbitrary request
//! bytes, arbitrary avail indices), the virtio-scsi queues never panic,
//! every used entry names a head the driver offered, and a malformed chain
//! is reported as NEEDS_RESET rather than answered.

use std::sync::Arc;

use devices::virtio::scsi::test_utils::{FakeTarget, RecordingInterrupt};
use devices::virtio::scsi::{ScsiControllerConfig, TargetSlot, VirtioScsi};
use proptest::prelude::*;
use scsi::{PortName, TargetPort};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 16;
const MEM: u64 = 0x10_0000;

fn device() -> VirtioScsi {
    let initiator: PortName = "naa.5001405000000001".parse().unwrap();
    let t = Arc::new(FakeTarget::new(0, &[0, 1]));
    VirtioScsi::new(
        ScsiControllerConfig {
            num_queues: 1,
            queue_size: 256,
            initiator: initiator.clone(),
        },
        [(
            0,
            TargetSlot::new(
                t,
                initiator,
                TargetPort {
                    relative_id: 1,
                    name: "naa.5001405000000002".parse().unwrap(),
                },
                [0, 1],
            ),
        )],
    )
    .unwrap()
}

/// A descriptor whose address is usually inside guest memory.
fn desc() -> impl Strategy<Value = (u64, u32, u16, u16)> {
    (
        prop_oneof![
            8 => 0x8000u64..MEM,
            1 => any::<u64>(),
            1 => MEM - 64..MEM + 64,
        ],
        prop_oneof![8 => 0u32..4096, 1 => any::<u32>()],
        0u16..8, // NEXT, WRITE, INDIRECT in any combination
        prop_oneof![8 => 0u16..QSIZE, 1 => any::<u16>()],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_rings_never_panic(
        descs in proptest::collection::vec(desc(), 1..=usize::from(QSIZE)),
        heads in proptest::collection::vec(0u16..QSIZE + 2, 1..8),
        avail_extra in 0u16..3,
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        queue in 0u16..3,
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM).unwrap())]).unwrap();
        // Request bytes (and some LUN-shaped ones) all over the buffer area.
        for (i, chunk) in (0x8000u64..MEM).step_by(0x800).enumerate() {
            let mut p = payload.clone();
            if i % 2 == 0 && p.len() >= 4 {
                p[0] = 1;
                p[1] = 0;
                p[2] = 0;
                p[3] = u8::try_from(i % 3).unwrap();
            }
            mem.write_slice(&p, GuestAddress(chunk)).unwrap();
        }
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
        for (i, &(a, l, f, n)) in descs.iter().enumerate() {
            vq.desc_table()
                .store(u16::try_from(i).unwrap(), RawDescriptor::from(SplitDescriptor::new(a, l, f, n)))
                .unwrap();
        }
        for (i, &h) in heads.iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(h);
        }
        let offered = u16::try_from(heads.len()).unwrap() + avail_extra;
        vq.avail().idx().store(offered);
        let mut q: Queue = vq.create_queue().unwrap();
        let dev = device();
        let irq = RecordingInterrupt::default();
        let r = match queue {
            0 => dev.control_processor().process_queue(&mem, &mut q, 0, &irq),
            _ => dev.request_processor().process_queue(&mem, &mut q, 2, &irq),
        };
        // Either everything was answered, or the device asked for a reset.
        prop_assert_eq!(r.is_err(), irq.needs_reset());
        let used = vq.used().idx().load();
        prop_assert!(used <= offered);
        for i in 0..used {
            let e = vq.used().ring().ref_at(usize::from(i)).unwrap().load();
            prop_assert!(e.id() < u32::from(QSIZE), "used head {} out of range", e.id());
        }
        if r.is_ok() {
            prop_assert_eq!(used, offered);
        }
    }
}
