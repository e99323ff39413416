import Foundation
import Glibc
import Testing
@testable import Machine
@testable import VMCore
@testable import Virtio

/// A backend of socket pairs (SOCK_SEQPACKET keeps frame boundaries, as a
/// TAP does): the device has one end of each, the test the other.
final class SocketNetBackend: NetBackend, @unchecked Sendable {
    let fds: [Int32]
    let peers: [Int32]
    var offloads: UInt32?
    var activeQueues: Int?

    init(pairs: Int = 1) {
        var mine: [Int32] = [], theirs: [Int32] = []
        for _ in 0..<pairs {
            var sv: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &sv) == 0)
            mine.append(sv[0])
            theirs.append(sv[1])
        }
        fds = mine
        peers = theirs
    }

    deinit { for fd in fds + peers { close(fd) } }

    func setOffloads(_ flags: UInt32) -> Bool { offloads = flags; return true }
    func setActiveQueues(_ count: Int) { activeQueues = count }

    func send(_ bytes: [UInt8], pair: Int = 0) { precondition(Glibc.send(peers[pair], bytes, bytes.count, 0) == bytes.count) }
    func receive(pair: Int = 0) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        let n = recv(peers[pair], &buffer, buffer.count, Int32(MSG_DONTWAIT))
        return n < 0 ? nil : Array(buffer[0..<n])
    }
}

final class NoTransport: VirtioTransport {
    func notifyFD(queue index: Int) -> Int32 { -1 }
    func interruptFD(queue index: Int) -> Int32? { nil }
}

/// virtio-net's queues driven as Linux's virtio_net drives them: transmit
/// chains of header and frame, receive buffers (mergeable or not), control
/// commands; the frames read back on the other end of the backend.
@Suite struct VirtioNetTests {
    let memory: GuestMemory
    init() throws { memory = try GuestMemory(size: 16 << 20) }

    final class Context: VirtioQueueContext {
        var interrupts: [Int] = []
        func interruptIfNeeded(_ queue: Virtqueue, index: Int) { if queue.needsInterrupt() { interrupts.append(index) } }
    }

    static let mac: [UInt8] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55]
    static let buffers: UInt64 = 0x400000

    func device(pairs: Int = 1, features: UInt64) -> (VirtioNet, SocketNetBackend) {
        let backend = SocketNetBackend(pairs: pairs)
        let net = VirtioNet(backend: backend, mac: Self.mac, mtu: 1400)
        net.activate(features: features | VirtioFeature.version1, queues: [], transport: NoTransport())
        return (net, backend)
    }

    /// A frame behind a 12-byte header: `length` bytes of a pattern.
    func frame(_ length: Int, seed: UInt8 = 1) -> [UInt8] {
        [UInt8](repeating: 0, count: Tap.headerSize) + (0..<length).map { UInt8(truncatingIfNeeded: $0 * 31) &+ seed }
    }

    @Test func theConfigurationSaysMACLinkPairsAndMTU() {
        let net = VirtioNet(backend: SocketNetBackend(pairs: 2), mac: Self.mac, mtu: 9000)
        var bytes = [UInt8](repeating: 0xEE, count: 14)
        bytes.withUnsafeMutableBytes { net.readConfig(offset: 0, data: $0) }
        #expect(bytes == Self.mac + [1, 0, 2, 0, 0x28, 0x23, 0, 0])
        #expect(net.queueMaxSizes.count == 5)
        #expect(net.deviceFeatures & VirtioNet.Feature.multiQueue != 0)
        #expect(VirtioNet(backend: SocketNetBackend(), mac: Self.mac).deviceFeatures & VirtioNet.Feature.multiQueue == 0)
    }

    @Test func aTransmitChainIsOneFrameOnTheBackend() throws {
        let (net, backend) = device(features: 0)
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let packet = frame(1000)
        try memory.write(packet, at: Self.buffers)
        // Header and the frame's start in one buffer, the rest in a second (as Linux does with a linear skb and frags).
        try d.setDescriptor(0, address: Self.buffers, length: 100, flags: 1, next: 1)
        try d.setDescriptor(1, address: Self.buffers + 100, length: UInt32(packet.count - 100), flags: 0)
        try d.makeAvailable(0)
        // A chain with a device-writable buffer, and one shorter than the header: dropped.
        try d.setDescriptor(2, address: Self.buffers, length: 64, flags: 1, next: 3)
        try d.setDescriptor(3, address: Self.buffers + 0x10000, length: 64, flags: 2)
        try d.makeAvailable(2)
        try d.setDescriptor(4, address: Self.buffers, length: 11, flags: 0)
        try d.makeAvailable(4)
        let context = Context()
        try net.process(queue: 1, try d.queue(), context: context)
        #expect(backend.receive() == packet)
        #expect(backend.receive() == nil, "a dropped chain reached the backend")
        #expect(d.usedIdx == 3)
        #expect(try d.usedElement(0) == (0, 0) && d.usedElement(2) == (4, 0))
        let c = net.counters[0]
        #expect(c.txPackets.load(ordering: .relaxed) == 1 && c.txBytes.load(ordering: .relaxed) == 1000)
        #expect(c.txDropped.load(ordering: .relaxed) == 2)
        // Each completion is offered; this driver (no EVENT_IDX, no
        // NO_INTERRUPT flag) asks to hear of every one.
        #expect(context.interrupts == [1, 1, 1])
    }

    /// With EVENT_IDX the per-completion offers give one interrupt per
    /// crossing of the driver's used_event: here at the first completion,
    /// not again for the two after it.
    @Test func transmitCompletionsInterruptOncePerUsedEvent() throws {
        let (net, backend) = device(features: 0)
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let packet = frame(200)
        try memory.write(packet, at: Self.buffers)
        for i: UInt16 in 0..<3 {
            try d.setDescriptor(i, address: Self.buffers, length: UInt32(packet.count), flags: 0)
            try d.makeAvailable(i)
        }
        try memory.store(UInt16(0), at: d.avail + 4 + 2 * UInt64(d.size))    // used_event: wake me after entry 0
        let context = Context()
        try net.process(queue: 1, try d.queue(eventIndex: true), context: context)
        for _ in 0..<3 { #expect(backend.receive() == packet) }
        #expect(d.usedIdx == 3)
        #expect(context.interrupts == [1])
    }

    /// Mergeable buffers: a 3000-byte frame fills two 2 KiB chains, says
    /// num_buffers 2, and a frame with too few buffers waits for more.
    @Test func aFrameSpreadsOverMergeableBuffersOrWaitsForThem() throws {
        let (net, backend) = device(features: VirtioNet.Feature.mergeableRxBuffers)
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let q = try d.queue()
        try d.setDescriptor(0, address: Self.buffers, length: 2048, flags: 2)
        try d.makeAvailable(0)
        let big = frame(3000, seed: 7)
        backend.send(big)
        let context = Context()
        try net.inputReady(0, queues: [q, nil, nil], context: context)
        #expect(d.usedIdx == 0, "a frame was split over buffers that cannot hold it")
        #expect(!net.wantsInput(0), "the pair is polled with no room")
        // One more chain, and the driver's notification of the receive queue.
        try d.setDescriptor(1, address: Self.buffers + 0x10000, length: 2048, flags: 2)
        try d.makeAvailable(1)
        try net.process(queue: 0, q, context: context)
        #expect(net.wantsInput(0))
        #expect(d.usedIdx == 2)
        #expect(try d.usedElement(0) == (0, 2048) && d.usedElement(1) == (1, UInt32(big.count - 2048)))
        var expected = big
        expected[10] = 2    // num_buffers
        let got = try memory.read(at: Self.buffers, count: 2048) + memory.read(at: Self.buffers + 0x10000, count: big.count - 2048)
        #expect(got == expected)
        #expect(net.counters[0].rxPackets.load(ordering: .relaxed) == 1 && net.counters[0].rxBytes.load(ordering: .relaxed) == 3000)
        #expect(context.interrupts == [0])
    }

    /// With room for the largest frame available, frames are read straight
    /// into the guest's buffers: each keeps the chains it filled (num_buffers
    /// says how many), the chains it did not need stay available, untouched.
    @Test func framesAreReadStraightIntoBuffersThatCanHoldTheLargest() throws {
        let (net, backend) = device(features: VirtioNet.Feature.mergeableRxBuffers)
        let d = TestDriver(memory: memory, size: 32, base: 0x100000)
        let q = try d.queue()
        for i in 0..<20 {                                                  // 80 KiB: more than maxPacket
            try d.setDescriptor(UInt16(i), address: Self.buffers + UInt64(i) * 4096, length: 4096, flags: 2)
            try d.makeAvailable(UInt16(i))
        }
        #expect(20 * 4096 >= VirtioNet.maxPacket)
        let first = frame(9000, seed: 3), second = frame(100, seed: 5)
        backend.send(first)
        backend.send(second)
        let context = Context()
        try net.inputReady(0, queues: [q, nil, nil], context: context)
        #expect(d.usedIdx == 4)
        #expect(try d.usedElement(0) == (0, 4096) && d.usedElement(1) == (1, 4096) && d.usedElement(2) == (2, UInt32(first.count - 8192)))
        #expect(try d.usedElement(3) == (3, UInt32(second.count)))
        var expected = first
        expected[10] = 3                                                   // num_buffers
        #expect(try memory.read(at: Self.buffers, count: first.count) == expected)
        expected = second
        expected[10] = 1
        #expect(try memory.read(at: Self.buffers + 3 * 4096, count: second.count) == expected)
        #expect(q.availableEntries == 16)                                  // the rest went back
        #expect(try memory.read(at: Self.buffers + 4 * 4096, count: 16 * 4096).allSatisfy { $0 == 0 })
        let c = net.counters[0]
        #expect(c.rxPackets.load(ordering: .relaxed) == 2 && c.rxBytes.load(ordering: .relaxed) == 9100)
        #expect(context.interrupts == [0])
        // Without mergeable buffers: one chain of 17 buffers (68 KiB) takes the frame whole.
        let (single, backend2) = device(features: 0)
        let d2 = TestDriver(memory: memory, size: 32, base: 0x200000)
        for i in 0..<17 {
            try d2.setDescriptor(UInt16(i), address: Self.buffers + 0x40000 + UInt64(i) * 4096, length: 4096, flags: i < 16 ? 3 : 2, next: UInt16(i + 1))
        }
        try d2.makeAvailable(0)
        backend2.send(first)
        try single.inputReady(0, queues: [try d2.queue(), nil, nil], context: Context())
        #expect(try d2.usedIdx == 1 && d2.usedElement(0) == (0, UInt32(first.count)))
        expected = first
        expected[10] = 1
        #expect(try memory.read(at: Self.buffers + 0x40000, count: first.count) == expected)
    }

    /// Without mergeable buffers a frame must fit one chain: a bigger one is
    /// dropped and the chain stays for the next frame, which says num_buffers 1.
    @Test func withoutMergeableBuffersAFrameFitsOneChainOrIsDropped() throws {
        let (net, backend) = device(features: 0)
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let q = try d.queue()
        try d.setDescriptor(0, address: Self.buffers, length: 12, flags: 3, next: 1)     // header, then data: two buffers
        try d.setDescriptor(1, address: Self.buffers + 0x1000, length: 1514, flags: 2)
        try d.makeAvailable(0)
        backend.send(frame(1600))
        let small = frame(60, seed: 9)
        backend.send(small)
        try net.inputReady(0, queues: [q], context: Context())
        #expect(d.usedIdx == 1)
        #expect(try d.usedElement(0) == (0, UInt32(small.count)))
        var expected = small
        expected[10] = 1
        #expect(try memory.read(at: Self.buffers, count: 12) + memory.read(at: Self.buffers + 0x1000, count: 60) == expected)
        #expect(net.counters[0].rxDropped.load(ordering: .relaxed) == 1 && net.counters[0].rxPackets.load(ordering: .relaxed) == 1)
    }

    /// A receive chain's device-readable buffers are never written.
    @Test func onlyWritableBuffersAreWritten() throws {
        let (net, backend) = device(features: VirtioNet.Feature.mergeableRxBuffers)
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let q = try d.queue()
        try memory.fill(0xAB, at: Self.buffers, count: 64)
        try d.setDescriptor(0, address: Self.buffers, length: 64, flags: 1, next: 1)
        try d.setDescriptor(1, address: Self.buffers + 0x1000, length: 4096, flags: 2)
        try d.makeAvailable(0)
        backend.send(frame(100))
        try net.inputReady(0, queues: [q], context: Context())
        #expect(d.usedIdx == 1)
        #expect(try memory.read(at: Self.buffers, count: 64) == [UInt8](repeating: 0xAB, count: 64))
    }

    func controlCommand(_ net: VirtioNet, _ bytes: [UInt8], driver d: TestDriver, _ q: Virtqueue, queue: Int) throws -> (ack: UInt8, used: UInt32) {
        let head = UInt16(d.availIdx * 2 % d.size)
        try memory.write(bytes, at: Self.buffers + 0x2000)
        try memory.store(UInt8(0xEE), at: Self.buffers + 0x3000)
        try d.setDescriptor(head, address: Self.buffers + 0x2000, length: UInt32(bytes.count), flags: 1, next: head + 1)
        try d.setDescriptor(head + 1, address: Self.buffers + 0x3000, length: 1, flags: 2)
        try d.makeAvailable(head)
        let before = d.usedIdx
        try net.process(queue: queue, q, context: Context())
        #expect(d.usedIdx == before &+ 1)
        return (try memory.load(UInt8.self, at: Self.buffers + 0x3000), try d.usedElement(before).1)
    }

    @Test func controlCommandsSetPairsAndOffloadsAndRefuseTheRest() throws {
        let F = VirtioNet.Feature.self
        let (net, backend) = device(pairs: 2, features: F.controlQueue | F.multiQueue | F.ctrlGuestOffloads | F.guestCsum | F.guestTSO4)
        #expect(backend.offloads == Tap.Offload.checksum | Tap.Offload.tso4)
        #expect(net.controlQueue == 4 && backend.activeQueues == 1 && !net.wantsInput(1))
        let d = TestDriver(memory: memory, size: 8, base: 0x100000)
        let q = try d.queue()
        #expect(try controlCommand(net, [4, 0, 2, 0], driver: d, q, queue: 4) == (0, 1))           // VQ_PAIRS_SET 2
        #expect(net.activePairs.load(ordering: .relaxed) == 2 && backend.activeQueues == 2 && net.wantsInput(1))
        #expect(try controlCommand(net, [4, 0, 3, 0], driver: d, q, queue: 4).ack == 1)              // more than offered
        #expect(try controlCommand(net, [4, 0, 0, 0], driver: d, q, queue: 4).ack == 1)
        #expect(try controlCommand(net, [5, 0, 2, 0, 0, 0, 0, 0, 0, 0], driver: d, q, queue: 4).ack == 0)   // GUEST_CSUM only
        #expect(backend.offloads == Tap.Offload.checksum)
        #expect(try controlCommand(net, [5, 0, 0, 0, 0, 0, 0, 0, 0, 0], driver: d, q, queue: 4).ack == 0)
        #expect(backend.offloads == 0)
        #expect(try controlCommand(net, [5, 0, 0, 1, 0, 0, 0, 0, 0, 0], driver: d, q, queue: 4).ack == 1)   // GUEST_TSO6: not negotiated
        #expect(try controlCommand(net, [5, 0, 2], driver: d, q, queue: 4).ack == 1)                        // short
        #expect(try controlCommand(net, [0, 0, 1], driver: d, q, queue: 4).ack == 1)                        // RX class: not offered
        #expect(try controlCommand(net, [4], driver: d, q, queue: 4).ack == 1)
        net.reset()
        #expect(backend.offloads == 0 && backend.activeQueues == 1 && net.activePairs.load(ordering: .relaxed) == 1)
    }

    @Test func netSpecsParse() throws {
        #expect(try NetSpec.parse("tap=tap0") == .init(tap: "tap0"))
        #expect(try NetSpec.parse("tap=t1,mac=02:AB:cd:00:00:01,queues=4,vhost=on")
                == .init(tap: "t1", mac: [2, 0xAB, 0xCD, 0, 0, 1], queues: 4, vhost: true))
        for (bad, words) in [("mac=02:00:00:00:00:01", "no tap=NAME"), ("tap=", "1 to 15"), ("tap=abcdefghijklmnop", "1 to 15"),
                             ("tap=a/b", "1 to 15"), ("tap=t,mac=03:00:00:00:00:01", "multicast"), ("tap=t,mac=00:00:00:00:00:00", "all zeros"),
                             ("tap=t,mac=02:00:00:00:00", "six hex bytes"), ("tap=t,queues=0", "queues must be 1 to 64"),
                             ("tap=t,vhost=yes", "vhost must be on or off"), ("tap=t,tap=u", "given twice"), ("tap=t,speed=1", "unknown option"),
                             ("tap=t,ro", "not KEY=VALUE")] {
            #expect(throws: NetSpecError.self) { try NetSpec.parse(bad) }
            do { _ = try NetSpec.parse(bad) } catch { #expect(error.message.contains(words), "\(bad): \(error.message)") }
        }
        let mac = Tap.defaultMAC(for: "tap0")
        #expect(mac == Tap.defaultMAC(for: "tap0") && mac != Tap.defaultMAC(for: "tap1"))
        #expect(mac.count == 6 && mac[0] == 0x02)
    }
}
