import VMCore
import Glibc
import Synchronization

/// QEMU's pc-testdev, the ISA test device kvm-unit-tests drives (facts from
/// QEMU's hw/misc/pc-testdev.c): one 32-bit latch read and written at any
/// width through ports 0xe0-0xe3 and byte-wise through 0xe8-0xeb; a 32-bit
/// write of a guest-physical address to 0xe4 makes the host drop its
/// mappings of that page (the guest's TLB entries for it with them); a byte
/// write to 0x2000 + n (n < 24) sets ISA IRQ line n's level; and 64 KiB of
/// memory-like MMIO at 0xff000000 (kvm-unit-tests' "ioram").
public final class PCTestDevice: BusDevice {
    public static let latchPort: UInt16 = 0xe0, flushPort: UInt16 = 0xe4, byteLatchPort: UInt16 = 0xe8
    public static let irqPort: UInt16 = 0x2000
    public static let irqLines = 24
    public static let ioRAM: UInt64 = 0xff00_0000
    public static let ioRAMSize = 0x1_0000

    struct State {
        var latch: UInt32 = 0
        var ioRAM = [UInt8](repeating: 0, count: PCTestDevice.ioRAMSize)
    }
    private let state = Mutex(State())
    private let setIRQ: @Sendable (UInt32, Bool) -> Void
    private let flushPage: @Sendable (UInt64) -> Void

    public init(setIRQ: @escaping @Sendable (UInt32, Bool) -> Void, flushPage: @escaping @Sendable (UInt64) -> Void) {
        self.setIRQ = setIRQ
        self.flushPage = flushPage
    }

    /// The flush-page write's effect on svmm's side: write-protecting the
    /// page of guest RAM and back makes the kernel drop every mapping of it,
    /// KVM's with them (as QEMU's mprotect does); its bytes stay. An address
    /// outside guest RAM does nothing.
    public static func dropMappings(of page: UInt64, in memory: GuestMemory) {
        // SAFETY: the pointer is the page's own mapping, used only inside this call.
        _ = try? memory.withBytes(at: page & ~0xFFF, count: 4096) { bytes in
            mprotect(bytes.baseAddress, bytes.count, PROT_READ)
            mprotect(bytes.baseAddress, bytes.count, PROT_READ | PROT_WRITE)
        }
    }

    /// Which byte of the latch a port holds, for the two latch windows.
    static func latchByte(_ address: UInt64) -> Int? {
        switch address {
        case UInt64(latchPort)..<UInt64(latchPort + 4): Int(address) - Int(latchPort)
        case UInt64(byteLatchPort)..<UInt64(byteLatchPort + 4): Int(address) - Int(byteLatchPort)
        default: nil
        }
    }

    public func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
        if address >= Self.ioRAM {
            let at = Int(address - Self.ioRAM)
            state.withLock { s in for i in 0..<data.count where at + i < Self.ioRAMSize { data[i] = s.ioRAM[at + i] } }
        } else if let first = Self.latchByte(address) {
            let latch = state.withLock { $0.latch }
            // Bytes past the latch's fourth read as 0.
            for i in 0..<data.count where first + i < 4 { data[i] = UInt8(truncatingIfNeeded: latch >> (8 * (first + i))) }
        }
    }

    public func write(address: UInt64, data: UnsafeRawBufferPointer) {
        if address >= Self.ioRAM {
            let at = Int(address - Self.ioRAM)
            state.withLock { s in for i in 0..<data.count where at + i < Self.ioRAMSize { s.ioRAM[at + i] = data[i] } }
        } else if let first = Self.latchByte(address) {
            state.withLock { s in
                for i in 0..<data.count where first + i < 4 {
                    let shift = 8 * (first + i)
                    s.latch = s.latch & ~(0xFF << shift) | UInt32(data[i]) << shift
                }
            }
        } else if address == UInt64(Self.flushPort), data.count == 4 {
            flushPage(UInt64(UInt32(truncatingIfNeeded: LittleEndian.value(data))) & ~0xFFF)
        } else if address >= UInt64(Self.irqPort), address < UInt64(Self.irqPort) + UInt64(Self.irqLines), data.count == 1 {
            setIRQ(UInt32(address - UInt64(Self.irqPort)), data[0] != 0)
        }
    }
}
