import API
import Machine

/// Fuzz targets for the board's own port and MMIO devices (in Machine, which
/// the Virtio target's `FuzzTarget` cannot see).
enum BoardFuzzTarget: String, CaseIterable {
    /// kvm-unit-tests' devices as the guest reaches them, through the same
    /// buses: fw_cfg, the PM timer, isa-debug-exit, pc-testdev (latch,
    /// flush-page on 1 MiB of guest RAM, IRQ lines, ioram) and pci-testdev
    /// (both BARs, and its configuration space through 0xCF8/0xCFC), and the
    /// i8042 keyboard controller (ports 0x60 and 0x64). The
    /// input is 8-byte operations: [0] bit 0 read/write, bits 1-2 width
    /// (1, 2, 4, 8), bits 3-7 which device range; [1..2] le16 offset into
    /// it; [3..6] the value (written little-endian); [7] bit 0: Ctrl-Alt-Del
    /// typed into the i8042 after the access.
    case testDevices = "test-devices"
    /// Firecracker's API as `svmm serve` answers it: bytes as a client sends
    /// them, parsed into requests (HTTP/1.1, bodies, pipelining), each routed
    /// and its body decoded (API's APIFuzz).
    case api
    /// A snapshot's state file (SnapshotState.decode): any bytes, refused
    /// with an error or read; what is read writes back byte for byte.
    case snapshotState = "snapshot-state"

    func run(_ input: UnsafeRawBufferPointer) {
        switch self {
        case .testDevices: TestDevicesFuzz.shared.run(input)
        case .api: APIFuzz.run(input)
        case .snapshotState: SnapshotState.fuzz(input)
        }
    }
}
