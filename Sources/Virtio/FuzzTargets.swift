import Glibc
import VMCore

/// The libFuzzer targets, one per guest-facing parser: arbitrary bytes become
/// guest RAM (descriptor tables, rings, buffers) and guest register accesses.
/// Shared by `svmm-fuzz` (Scripts/fuzz) and the unit test that replays each
/// target's corpus (Tests/Fuzz/corpus/TARGET/). Whatever the bytes, a target
/// must return: errors are the guest's problem (an error status, a device
/// reset), never svmm's crash, a hang or an access outside guest RAM.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Descriptor chains straight from a split virtqueue (virtio 1.2 §2.7):
    /// [0] log2 queue size, [1] bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, then
    /// the input is guest RAM from address 0.
    case virtqueue
    /// The PCI transport's registers and configuration space, at any offset
    /// and width: [0] device, then 8-byte operations (kind, width, offset
    /// le16, value le32) against BAR 0, the 0xCF8/0xCFC configuration ports
    /// and the queues; the input is also guest RAM.
    case pciTransport = "pci-transport"
    /// virtio-rng driven through a driver's bring-up and then arbitrary
    /// register writes: [0] unused (so the rings stay where the seeds put
    /// them), [1] feature bits, [2] log2 queue size, [3] number of 7-byte
    /// writes (offset le16, width, value le32); the input is guest RAM.
    case virtioRNG = "virtio-rng"
    /// virtio-console, as virtio-rng.
    case virtioConsole = "virtio-console"
    /// virtio-blk, as virtio-rng, on a 64 KiB scratch image (unlinked once
    /// open): request headers, sector ranges, descriptor layouts, status
    /// buffers, discard and write-zeroes segments.
    case virtioBlock = "virtio-blk"
    /// virtio-net, as virtio-rng, with [0] choosing device features (bit 0
    /// mergeable receive buffers, 1 the control queue and two pairs, 2
    /// checksum and TSO offloads, 3 offload control), on socket pairs for a
    /// TAP: transmit chains, then frames of 60, 1514, 9000 and 65562 bytes
    /// into the receive buffers, then every queue once more (control
    /// commands).
    case virtioNet = "virtio-net"

    /// Guest RAM: the rings at fixed places (a queue's at `queueStride` past
    /// the one before), everything else data. 1 MiB mapped once per process.
    static let ramSize: UInt64 = 1 << 20
    static let descriptors: UInt64 = 0x1000, available: UInt64 = 0x5000, used: UInt64 = 0x6000, queueStride: UInt64 = 0x10000
    static let barAddress: UInt64 = 0xE000_0000
    /// virtio-net's five queues must all lie in a 64 KiB input: its rings
    /// are 1 KiB apart (queues of up to 64 entries do not overlap).
    static let netQueueStride: UInt64 = 0x400

    public func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 4, let memory = Self.loadRAM(input) else { return }
        switch self {
        case .virtqueue: Self.walkChains(input, memory)
        case .pciTransport: Self.accessRegisters(input, memory)
        case .virtioRNG: Self.bringUp(VirtioRNG(), input, memory)
        case .virtioConsole: Self.bringUp(VirtioConsole(input: nil, output: { _ in }), input, memory)
        case .virtioBlock:
            guard let block = Self.scratchBlock else { return }
            Self.bringUp(block, input, memory)
            block.reset()      // what is still in flight finishes before the next input reuses guest RAM
        case .virtioNet:
            Self.network(input, memory)
        }
    }

    /// The block target's device, one per process: an AIO context costs an
    /// RCU grace period to destroy (tens of milliseconds), which a device per
    /// input would pay every time. Reset after each input, as a driver would.
    private static let scratchBlock: VirtioBlock? = scratchDisk.map { VirtioBlock(disk: $0) }

    /// The block target's image: a 64 KiB file in the temporary directory,
    /// unlinked as soon as it is open (nothing left behind).
    private static let scratchDisk: DiskImage? = {
        var template = Array("/tmp/svmm-fuzz-disk-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let path = String(cString: template)
        defer { unlink(path) }
        guard ftruncate(fd, 64 << 10) == 0 else { return nil }
        return try? DiskImage(.init(path: path))
    }()

    /// MSI-X that delivers nowhere (the fuzz targets, the snapshot-state one's too).
    public final class NullMSIX: MSIXDelivery {
        public init() {}
        public func route(vector: Int, message: MSIXMessage?) {}
        public func fire(vector: Int) {}
    }

    /// One GuestMemory for the whole process (mapping 1 MiB per input would
    /// cost more than the input); libFuzzer calls targets on one thread.
    private static let ram = try? GuestMemory(size: ramSize)

    /// Guest RAM holds the input from address 0 and zeros after it.
    static func loadRAM(_ input: UnsafeRawBufferPointer) -> GuestMemory? {
        guard let ram else { return nil }
        let n = min(input.count, Int(ramSize))
        try? ram.write(input[0..<n], at: 0)
        try? ram.fill(0, at: UInt64(n), count: Int(ramSize) - n)
        return ram
    }

    /// A little-endian field of the input, read where loadRAM put it (the
    /// input is guest RAM from address 0; callers stay inside the input).
    static func field<T: FixedWidthInteger>(_: T.Type, _ memory: GuestMemory, at offset: Int) -> T {
        (try? memory.load(T.self, at: UInt64(offset))) ?? 0
    }

    static func walkChains(_ input: UnsafeRawBufferPointer, _ memory: GuestMemory) {
        let size = UInt16(1) << UInt16(input[0] % 16)
        guard let q = try? Virtqueue(memory: memory, size: size, descriptors: descriptors, available: available, used: used,
                                     eventIndex: input[1] & 1 != 0, indirect: input[1] & 2 != 0) else { return }
        // At most twice around the ring: pop must refuse an index that jumps.
        for round in 0..<(2 * Int(size) + 2) {
            _ = q.needsInterrupt()
            guard let chain = try? q.pop() else { return }
            var touched = 0
            for b in chain.readable { touched += (try? memory.read(at: b.address, count: Int(b.length)))?.count ?? 0 }
            for b in chain.writable { try? memory.fill(UInt8(truncatingIfNeeded: round), at: b.address, count: Int(b.length)) }
            q.push(head: chain.head, written: UInt32(min(chain.writableLength, touched)))
            if round % 2 == 1 { q.disableNotification() } else { _ = q.enableNotification() }
        }
    }

    static func accessRegisters(_ input: UnsafeRawBufferPointer, _ memory: GuestMemory) {
        let device: any VirtioDevice = input[0] & 1 == 0 ? VirtioRNG() : VirtioConsole(input: nil, output: { _ in })
        guard let f = try? VirtioPCIDevice(device: device, barAddress: barAddress, memory: memory, msix: { _ in NullMSIX() }) else { return }
        let bridge = PCIHostBridge(functions: [f])
        var p = 1
        while p + 8 <= input.count, p < 4096 {
            let kind = input[p], width = Int(input[p + 1] % 8) + 1
            let offset = Int(field(UInt16.self, memory, at: p + 2))
            var value = UInt64(field(UInt32.self, memory, at: p + 4))
            p += 8
            withUnsafeMutableBytes(of: &value) { v in
                let data = UnsafeMutableRawBufferPointer(rebasing: v[0..<width])
                switch kind % 8 {
                case 0: f.read(address: barAddress + UInt64(offset) % VirtioPCIDevice.barSize, data: data)
                case 1: f.write(address: barAddress + UInt64(offset) % VirtioPCIDevice.barSize, data: UnsafeRawBufferPointer(data))
                case 2: f.readConfig(offset % 256, UnsafeMutableRawBufferPointer(rebasing: data[0..<min(width, 256 - offset % 256)]))
                case 3: f.writeConfig(offset % 256, UnsafeRawBufferPointer(rebasing: data[0..<min(width, 256 - offset % 256)]))
                case 4: bridge.write(address: UInt64(PCIHostBridge.addressPort), data: UnsafeRawBufferPointer(rebasing: v[0..<4]))
                case 5: bridge.read(address: UInt64(PCIHostBridge.addressPort) + UInt64(offset % 8), data: data)
                case 6: bridge.write(address: UInt64(PCIHostBridge.addressPort) + UInt64(offset % 8), data: UnsafeRawBufferPointer(data))
                default: f.service(queue: offset % (device.queueMaxSizes.count + 1))
                }
            }
        }
    }

    /// The network target's backend: socket pairs that keep frame
    /// boundaries, as a TAP's queues do.
    final class SocketPairs: NetBackend, @unchecked Sendable {
        let fds: [Int32]
        let peers: [Int32]
        init?(_ count: Int) {
            var mine: [Int32] = [], theirs: [Int32] = []
            for _ in 0..<count {
                var sv: [Int32] = [0, 0]
                guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &sv) == 0 else {
                    for fd in mine + theirs { close(fd) }
                    return nil
                }
                mine.append(sv[0])
                theirs.append(sv[1])
            }
            fds = mine
            peers = theirs
        }
        deinit { for fd in fds + peers { close(fd) } }
        func setOffloads(_ flags: UInt32) -> Bool { true }
        func setActiveQueues(_ count: Int) {}
    }

    static func network(_ input: UnsafeRawBufferPointer, _ memory: GuestMemory) {
        let choice = input[0]
        guard let backend = SocketPairs(choice & 2 != 0 ? 2 : 1) else { return }
        let net = VirtioNet(backend: backend, mac: [2, 0, 0, 0, 0, 1])
        let F = VirtioNet.Feature.self
        var features: UInt64 = F.mtu | F.mac | F.status
        if choice & 1 != 0 { features |= F.mergeableRxBuffers }
        if choice & 2 != 0 { features |= F.controlQueue | F.multiQueue }
        if choice & 4 != 0 { features |= F.csum | F.guestCsum | F.hostTSO4 | F.guestTSO4 | F.hostTSO6 | F.guestTSO6 }
        if choice & 8 != 0 { features |= F.ctrlGuestOffloads | F.controlQueue }
        guard let f = bringUp(net, input, memory, deviceFeatures: features, stride: netQueueStride) else { return }
        var frame = [UInt8](repeating: 0, count: VirtioNet.maxPacket)
        for (i, size) in [60, 1514, 9000, VirtioNet.maxPacket].enumerated() {
            frame[0] = UInt8(i)
            _ = send(backend.peers[i % backend.peers.count], frame, size, 0)
        }
        for pair in 0..<backend.fds.count { f.serviceInput(pair) }
        for q in 0..<net.queueMaxSizes.count { f.service(queue: q) }
        for pair in 0..<backend.fds.count { f.serviceInput(pair) }
    }

    @discardableResult
    static func bringUp(_ device: any VirtioDevice, _ input: UnsafeRawBufferPointer, _ memory: GuestMemory,
                        deviceFeatures: UInt64 = 0, stride: UInt64 = queueStride) -> VirtioPCIDevice? {
        guard let f = try? VirtioPCIDevice(device: device, barAddress: barAddress, memory: memory, msix: { _ in NullMSIX() }) else { return nil }
        func write(_ offset: Int, _ size: Int, _ value: UInt64) {
            var v = value
            withUnsafeBytes(of: &v) { f.write(address: f.barAddress + UInt64(offset), data: UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
        }
        // A driver's bring-up with the fuzzed features and queue size (virtio 1.2 §3.1.1).
        var features = VirtioFeature.version1 | deviceFeatures
        if input[1] & 1 != 0 { features |= VirtioFeature.eventIndex }
        if input[1] & 2 != 0 { features |= VirtioFeature.indirectDescriptors }
        if input[1] & 4 != 0 { features |= UInt64(input[1]) << 24 }          // maybe unoffered bits
        write(0x14, 1, 3)
        write(0x08, 4, 0); write(0x0C, 4, features & 0xFFFF_FFFF)
        write(0x08, 4, 1); write(0x0C, 4, features >> 32)
        write(0x14, 1, 3 | 8)
        for q in 0..<device.queueMaxSizes.count {
            let stride = UInt64(q) * stride
            write(0x16, 2, UInt64(q))
            write(0x18, 2, 1 << UInt64(input[2] % 16))
            write(0x20, 4, descriptors + stride); write(0x24, 4, 0)
            write(0x28, 4, available + stride); write(0x2C, 4, 0)
            write(0x30, 4, used + stride); write(0x34, 4, 0)
            write(0x1C, 2, 1)
        }
        // Arbitrary register writes (common config, notify, MSI-X table,
        // device config), then DRIVER_OK, then every queue serviced twice.
        var p = 4
        for _ in 0..<Int(input[3] % 32) where p + 7 <= input.count {
            let offset = Int(field(UInt16.self, memory, at: p))
            let size = [1, 2, 4, 8][Int(input[p + 2]) % 4]
            let value = UInt64(field(UInt32.self, memory, at: p + 3))
            write(offset % Int(VirtioPCIDevice.barSize - 8), size, value)
            p += 7
        }
        write(0x14, 1, 3 | 8 | 4)
        for q in 0..<device.queueMaxSizes.count {
            f.service(queue: q)
            f.service(queue: q)
        }
        return f
    }
}
