import Glibc
import Synchronization
import VMCore

/// Where a virtio-net device's frames go and come from: one file descriptor
/// per queue pair, each carrying frames behind the 12-byte virtio-net header
/// (a TAP with `IFF_VNET_HDR`, or a socket pair in tests), non-blocking.
public protocol NetBackend: AnyObject, Sendable {
    var fds: [Int32] { get }
    /// Which offloads (`Tap.Offload`) the guest accepts in frames it receives.
    @discardableResult func setOffloads(_ flags: UInt32) -> Bool
    /// Only the first `count` descriptors receive frames (a multi-queue TAP
    /// spreads flows over the queues attached, and the guest reads only the
    /// pairs it enabled).
    func setActiveQueues(_ count: Int)
}

extension Tap: NetBackend {}

/// virtio-net (virtio 1.2 §5.1) on a `NetBackend`, the data path in svmm:
/// one receive and one transmit queue per queue pair, then the control
/// queue.
///
/// Transmit: each chain (header and frame, device-readable) is written to
/// its pair's descriptor with one `writev`, straight from guest RAM.
/// Receive: a frame is read from the pair's descriptor into the pair's
/// buffer when the guest has receive buffers, then copied into as many
/// buffers as it needs (mergeable receive buffers) with `num_buffers` set; a
/// frame that finds too few waits for the driver's next notification, and
/// the descriptor is not read meanwhile (the TAP queues, then drops).
///
/// Offered: checksum and TSO offloads both ways (the guest's receive
/// offloads mirrored to the TAP with TUNSETOFFLOAD, and changed by the
/// driver through the control queue), mergeable receive buffers, MTU, MAC,
/// link status, the control queue, and multiqueue with one pair per
/// descriptor. Everything the guest hands over is checked: a transmit chain
/// with device-writable buffers or a length outside header..64 KiB is
/// dropped and counted; a receive chain is written only in its writable
/// buffers; a control command that is malformed or not offered gets
/// VIRTIO_NET_ERR.
public final class VirtioNet: VirtioDevice, @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `frames`, `frameLength` and `features`
    // are touched only while the transport serves this device (its device
    // thread, or the vCPU thread at DRIVER_OK and reset, when the device
    // thread is not serving it); what `wantsInput` reads from the polling
    // loop is atomic; the rest is immutable.
    public let deviceID: UInt16 = 1
    public let pciClass: UInt32 = 0x02_0000      // network controller, Ethernet
    public let deviceFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public let backend: NetBackend
    public let mac: [UInt8]
    public let pairs: Int
    public let mtu: Int
    public let counters: [Counters]

    public final class Counters: Sendable {
        public let rxPackets = Atomic<UInt64>(0), rxBytes = Atomic<UInt64>(0), rxDropped = Atomic<UInt64>(0)
        public let txPackets = Atomic<UInt64>(0), txBytes = Atomic<UInt64>(0), txDropped = Atomic<UInt64>(0)
        /// Data descriptors svmm itself read or wrote (with vhost, the host kernel's do not count).
        public let dataDescriptors = Atomic<UInt64>(0)
        init() {}
    }

    public enum Feature {
        public static let csum: UInt64 = 1 << 0
        public static let guestCsum: UInt64 = 1 << 1
        public static let ctrlGuestOffloads: UInt64 = 1 << 2
        public static let mtu: UInt64 = 1 << 3
        public static let mac: UInt64 = 1 << 5
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        public static let mergeableRxBuffers: UInt64 = 1 << 15
        public static let status: UInt64 = 1 << 16
        public static let controlQueue: UInt64 = 1 << 17
        public static let multiQueue: UInt64 = 1 << 22
        /// The offloads of frames the guest receives (the control queue's GUEST_OFFLOADS bits).
        static let guestOffloads = guestCsum | guestTSO4 | guestTSO6
    }

    /// virtio 1.2 §5.1.6.5: classes and commands svmm answers.
    enum Control {
        static let ok: UInt8 = 0, error: UInt8 = 1
        static let classMQ: UInt8 = 4, mqPairsSet: UInt8 = 0
        static let classGuestOffloads: UInt8 = 5, guestOffloadsSet: UInt8 = 0
    }

    static let queueSize: UInt16 = 256
    /// The header (12 bytes) and the largest frame a TAP passes with TSO (64 KiB and an Ethernet header).
    public static let maxPacket = Tap.headerSize + 65_550
    /// At most this many frames received per wake-up, so transmit is not starved.
    static let receiveBatch = 256
    /// At most this many queue pairs (the stalled-pair mask is one word).
    public static let maxPairs = 64

    /// The negotiated features (from DRIVER_OK).
    var features: UInt64 = 0
    /// The receive offloads the guest asked for last (at DRIVER_OK, or through the control queue).
    var guestOffloads: UInt64 = 0
    /// Queue pairs the driver uses (1 until it sets more through the control queue).
    let activePairs = Atomic<Int>(1)
    /// Pairs whose receive queue had too few buffers: their descriptors are
    /// not polled until the driver notifies the receive queue.
    let stalled = Atomic<UInt64>(0)
    /// Per pair: a frame read from the backend and not yet given to the guest.
    let frames: [UnsafeMutableRawBufferPointer]
    var frameLength: [Int]
    /// Per pair: the I/O vectors and chains of a read straight into the
    /// guest's buffers (`receiveDirect`), kept to be reused.
    let directVectors: [UnsafeMutableBufferPointer<iovec>]
    var directChains: [[(chain: DescriptorChain, capacity: Int)]]
    /// At most this many guest buffers in one direct read (Linux's IOV_MAX is 1024).
    static let maxDirectVectors = 512
    /// Whether the data path is to be the host kernel's (vhost-net).
    public let vhost: Bool
    /// The vhost-net instances of the pairs the kernel serves (from DRIVER_OK to reset).
    var kernel: [(pair: Int, vhost: VhostNet)] = []
    /// Pairs the kernel serves: their queues and TAP descriptors are not svmm's.
    let kernelPairs = Atomic<UInt64>(0)

    /// `pairs` queue pairs, one per backend descriptor (at most `maxPairs`).
    /// With `vhost`, the host kernel carries the frames (vhost-net, one
    /// instance per pair) and svmm serves the control queue alone; where
    /// vhost-net refuses, one line says so and svmm serves the data path.
    public init(backend: NetBackend, mac: [UInt8], mtu: Int = 1500, vhost: Bool = false) {
        precondition(mac.count == 6 && !backend.fds.isEmpty)
        self.vhost = vhost
        self.backend = backend
        self.mac = mac
        self.mtu = mtu
        pairs = min(backend.fds.count, Self.maxPairs)
        var offered = Feature.csum | Feature.guestCsum | Feature.ctrlGuestOffloads | Feature.mtu | Feature.mac
            | Feature.guestTSO4 | Feature.guestTSO6 | Feature.hostTSO4 | Feature.hostTSO6
            | Feature.mergeableRxBuffers | Feature.status | Feature.controlQueue
        if pairs > 1 { offered |= Feature.multiQueue }
        deviceFeatures = offered
        queueMaxSizes = Array(repeating: Self.queueSize, count: 2 * pairs + 1)
        counters = (0..<pairs).map { _ in Counters() }
        frames = (0..<pairs).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: Self.maxPacket, alignment: 64) }
        frameLength = Array(repeating: 0, count: pairs)
        directVectors = (0..<pairs).map { _ in UnsafeMutableBufferPointer<iovec>.allocate(capacity: Self.maxDirectVectors) }
        directChains = Array(repeating: [], count: pairs)
    }

    deinit {
        for f in frames { f.deallocate() }
        for v in directVectors { v.deallocate() }
    }

    // MARK: Configuration

    /// struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu.
    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        var config = mac
        config += [1, 0]                                               // VIRTIO_NET_S_LINK_UP
        config += [UInt8(pairs & 0xFF), UInt8(pairs >> 8)]
        config += [UInt8(mtu & 0xFF), UInt8((mtu >> 8) & 0xFF)]
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < config.count ? config[o] : 0
        }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {}   // the MAC is not writable (no legacy)

    public func activate(features: UInt64, queues: [Virtqueue?], transport: VirtioTransport) {
        self.features = features
        guestOffloads = features & Feature.guestOffloads
        activePairs.store(1, ordering: .relaxed)
        stalled.store(0, ordering: .relaxed)
        backend.setActiveQueues(1)
        backend.setOffloads(Self.tunOffloads(guestOffloads))
        if vhost {
            do { try startKernelPairs(queues: queues, transport: transport) } catch {
                stopKernelPairs()
                Messages.line("svmm: virtio-net: vhost-net: \(error); the userspace path runs")
            }
        }
    }

    /// Hands every pair whose two queues the driver enabled to a vhost-net
    /// instance: the ring features, guest RAM, each vring's addresses, its
    /// notification eventfd (kick) and its MSI-X irqfd (call), the TAP queue.
    func startKernelPairs(queues: [Virtqueue?], transport: VirtioTransport) throws {
        var mask: UInt64 = 0
        for pair in 0..<pairs {
            guard 2 * pair + 1 < queues.count, let rx = queues[2 * pair], let tx = queues[2 * pair + 1] else { continue }
            let v = try VhostNet()
            let wanted = features & VhostNet.ringFeatures
            let offered = try v.features()
            guard wanted & ~offered == 0 else {
                throw HostError("VHOST_GET_FEATURES lacks 0x\(String(wanted & ~offered, radix: 16))", .notSupported)
            }
            try v.setFeatures(wanted)
            try v.setMemory(rx.memory)
            for (ring, q) in [rx, tx].enumerated() {
                let index = 2 * pair + ring
                guard let call = transport.interruptFD(queue: index) else {
                    throw HostError("queue \(index) has no MSI-X vector for vhost-net's interrupts", .invalidArgument)
                }
                let size = Int(q.size)
                func host(_ address: UInt64, _ count: Int) throws -> UInt64 {
                    // SAFETY: the kernel uses the address while this vhost instance
                    // lives; it is closed (reset, stop) before guest RAM is unmapped.
                    UInt64(UInt(bitPattern: try q.memory.ioVector(at: address, count: count).iov_base))
                }
                try v.setVring(ring, size: q.size, descriptors: try host(q.descriptorTable, 16 * size),
                               available: try host(q.availableRing, 6 + 2 * size), used: try host(q.usedRing, 6 + 8 * size),
                               base: q.nextAvailable, kick: transport.notifyFD(queue: index), call: call)
                try v.setBackend(ring, fd: backend.fds[pair])
            }
            kernel.append((pair, v))
            mask |= 1 << UInt64(pair)
        }
        kernelPairs.store(mask, ordering: .releasing)
    }

    /// Closes the vhost-net instances: once this returns the kernel touches
    /// neither guest RAM nor the TAP queues for them.
    func stopKernelPairs() {
        kernelPairs.store(0, ordering: .releasing)
        kernel = []
    }

    public func servedInKernel(queue index: Int) -> Bool {
        index != controlQueue && index / 2 < Self.maxPairs && kernelPairs.load(ordering: .acquiring) & (1 << UInt64(index / 2)) != 0
    }

    /// A pause: the kernel's rings stop (no backend) until `resume`.
    public func quiesce(queues: [Virtqueue?], context: VirtioQueueContext) {
        for (_, v) in kernel { try? v.setBackend(0, fd: -1); try? v.setBackend(1, fd: -1) }
    }

    public func resume() {
        for (pair, v) in kernel { try? v.setBackend(0, fd: backend.fds[pair]); try? v.setBackend(1, fd: backend.fds[pair]) }
    }

    public func reset() {
        stopKernelPairs()
        features = 0
        guestOffloads = 0
        for i in frameLength.indices { frameLength[i] = 0 }
        activePairs.store(1, ordering: .relaxed)
        stalled.store(0, ordering: .relaxed)
        backend.setActiveQueues(1)
        backend.setOffloads(0)
    }

    /// The TAP's offload flags for the guest's receive offloads (a TAP takes
    /// TSO only together with checksum offload).
    static func tunOffloads(_ guest: UInt64) -> UInt32 {
        guard guest & Feature.guestCsum != 0 else { return 0 }
        var flags = Tap.Offload.checksum
        if guest & Feature.guestTSO4 != 0 { flags |= Tap.Offload.tso4 }
        if guest & Feature.guestTSO6 != 0 { flags |= Tap.Offload.tso6 }
        return flags
    }

    /// The control queue's index: after every pair's queues with MQ, else 2.
    var controlQueue: Int { features & Feature.multiQueue != 0 ? 2 * pairs : 2 }

    // MARK: Queues

    public var inputFDs: [Int32] { Array(backend.fds.prefix(pairs)) }

    public func wantsInput(_ index: Int) -> Bool {
        let bit: UInt64 = 1 << UInt64(index)
        return index < activePairs.load(ordering: .relaxed) && stalled.load(ordering: .relaxed) & bit == 0
            && kernelPairs.load(ordering: .relaxed) & bit == 0
    }

    public func inputReady(_ index: Int, queues: [Virtqueue?], context: VirtioQueueContext) throws(VirtqueueError) {
        guard 2 * index < queues.count, let rx = queues[2 * index] else {
            stalled.bitwiseOr(1 << UInt64(index), ordering: .relaxed)
            return
        }
        try receive(pair: index, rx, context: context)
    }

    public func process(queue index: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        if index == controlQueue {
            guard features & Feature.controlQueue != 0 else { return }
            try control(queue, index: index, context: context)
            return
        }
        let pair = index / 2
        guard pair < activePairs.load(ordering: .relaxed) else { return }    // a pair the driver has not enabled
        if index % 2 == 1 {
            try transmit(pair: pair, queue, index: index, context: context)
        } else {
            stalled.bitwiseAnd(~(1 << UInt64(pair)), ordering: .relaxed)
            try receive(pair: pair, queue, context: context)
        }
    }

    // MARK: Transmit

    func transmit(pair: Int, _ queue: Virtqueue, index: Int, context: VirtioQueueContext) throws(VirtqueueError) {
        let c = counters[pair]
        while let chain = try queue.pop() {
            let length = chain.readableLength
            if chain.writable.isEmpty, length >= Tap.headerSize, length <= Self.maxPacket,
               send(chain.readable, fd: backend.fds[pair], memory: queue.memory) == length {
                c.txPackets.add(1, ordering: .relaxed)
                c.txBytes.add(UInt64(length - Tap.headerSize), ordering: .relaxed)
            } else {
                c.txDropped.add(1, ordering: .relaxed)
            }
            c.dataDescriptors.add(UInt64(chain.readable.count), ordering: .relaxed)
            queue.push(head: chain.head, written: 0)
            // Offered per completion, as QEMU does: the guest frees its sent
            // buffers (and its socket's budget) while the rest of the batch
            // goes out; with EVENT_IDX the driver's used_event keeps this to
            // one interrupt per wait (docs/net.md).
            context.interruptIfNeeded(queue, index: index)
        }
    }

    /// One `writev` of the chain's buffers; the bytes written, or -1.
    func send(_ buffers: [VirtqueueBuffer], fd: Int32, memory: GuestMemory) -> Int {
        var vectors: [iovec] = []
        vectors.reserveCapacity(buffers.count)
        for b in buffers {
            // The chain was checked to lie in guest RAM; the vectors are used
            // only by the writev below, inside this call.
            guard let v = try? memory.ioVector(at: b.address, count: Int(b.length)) else { return -1 }
            vectors.append(v)
        }
        return vectors.withUnsafeBufferPointer { writev(fd, $0.baseAddress, Int32($0.count)) }
    }

    // MARK: Receive

    enum Placement { case placed, dropped, needMoreBuffers }

    /// Reads frames from the pair's descriptor while the guest has buffers for them.
    func receive(pair: Int, _ queue: Virtqueue, context: VirtioQueueContext) throws(VirtqueueError) {
        let c = counters[pair]
        var placed = 0, attempts = 0
        // One interrupt offered for the batch, not one per frame: a guest
        // woken for each frame polls one, re-enables its interrupt and is
        // woken again (docs/net.md: 233 Mbit/s per frame, 730-839 per batch).
        defer { if placed > 0 { context.interruptIfNeeded(queue, index: 2 * pair) } }
        while placed < Self.receiveBatch && attempts < 2 * Self.receiveBatch {
            attempts += 1
            if frameLength[pair] == 0 {
                switch try receiveDirect(pair: pair, queue, counters: c) {
                case .placed: placed += 1; continue
                case .dropped: continue
                case .nothingToRead: return
                case .tooFewBuffers: break       // through the pair's buffer, as many chains as the frame needs
                }
                let n = read(backend.fds[pair], frames[pair].baseAddress, frames[pair].count)
                if n < 0 { return }             // EAGAIN: nothing more now (or the backend failed: nothing to read)
                guard n >= Tap.headerSize else { c.rxDropped.add(1, ordering: .relaxed); continue }
                frameLength[pair] = n
            }
            let before = queue.availableEntries
            switch try place(frames[pair], length: frameLength[pair], queue, counters: c) {
            case .placed:
                c.rxPackets.add(1, ordering: .relaxed)
                c.rxBytes.add(UInt64(frameLength[pair] - Tap.headerSize), ordering: .relaxed)
                frameLength[pair] = 0
                placed += 1
            case .dropped:
                c.rxDropped.add(1, ordering: .relaxed)
                frameLength[pair] = 0
            case .needMoreBuffers:
                // Ask to hear of new buffers; if some came meanwhile, try again.
                _ = queue.enableNotification()
                if queue.availableEntries == before {
                    stalled.bitwiseOr(1 << UInt64(pair), ordering: .relaxed)
                    return
                }
            }
        }
    }

    enum Direct { case placed, dropped, nothingToRead, tooFewBuffers }

    /// Reads one frame straight into the guest's receive buffers, with one
    /// copy (the kernel's, as vhost-net makes) instead of two, when the
    /// chains available can hold the largest frame the TAP gives: pops that
    /// many, reads into all of them, keeps those the frame filled (their
    /// count in the header's `num_buffers`) and gives the rest back unused.
    func receiveDirect(pair: Int, _ queue: Virtqueue, counters c: Counters) throws(VirtqueueError) -> Direct {
        let mergeable = features & Feature.mergeableRxBuffers != 0
        let vectors = directVectors[pair]
        var count = 0, capacity = 0, usable = true
        directChains[pair].removeAll(keepingCapacity: true)
        while capacity < Self.maxPacket && usable && (mergeable || directChains[pair].isEmpty) {
            guard let chain = try queue.pop() else { break }
            directChains[pair].append((chain, chain.writableLength))
            capacity += chain.writableLength
            for b in chain.writable {
                // The chain was checked to lie in guest RAM; the vectors are
                // used only by the readv below, inside this call.
                guard count < vectors.count, let v = try? queue.memory.ioVector(at: b.address, count: Int(b.length)) else {
                    usable = false
                    break
                }
                vectors[count] = v
                count += 1
            }
        }
        let chains = directChains[pair]
        guard usable, capacity >= Self.maxPacket, let first = chains.first?.chain.writable.first, first.length >= Tap.headerSize else {
            queue.unpop(chains.count)
            return .tooFewBuffers
        }
        let n = readv(backend.fds[pair], vectors.baseAddress, Int32(count))
        guard n >= Tap.headerSize else {
            queue.unpop(chains.count)      // the buffers go back untold; what the read left in them is unread
            if n < 0 { return .nothingToRead }
            c.rxDropped.add(1, ordering: .relaxed)
            return .dropped
        }
        var used = 0, remaining = n
        while remaining > 0 { remaining -= min(chains[used].capacity, remaining); used += 1 }
        // num_buffers (le16 at offset 10 of the header, which the first buffer holds whole).
        try? queue.memory.store(UInt16(used), at: first.address + 10)
        remaining = n
        for (chain, capacity) in chains.prefix(used) {
            let bytes = min(capacity, remaining)
            remaining -= bytes
            c.dataDescriptors.add(UInt64(chain.writable.count), ordering: .relaxed)
            queue.push(head: chain.head, written: UInt32(bytes))
        }
        queue.unpop(chains.count - used)
        c.rxPackets.add(1, ordering: .relaxed)
        c.rxBytes.add(UInt64(n - Tap.headerSize), ordering: .relaxed)
        return .placed
    }

    /// Copies one frame (header first) into the guest's receive buffers:
    /// as many chains as it needs with mergeable buffers, else one chain
    /// that holds it all. `num_buffers` in the header says how many.
    func place(_ frame: UnsafeMutableRawBufferPointer, length: Int, _ queue: Virtqueue, counters c: Counters) throws(VirtqueueError) -> Placement {
        let mergeable = features & Feature.mergeableRxBuffers != 0
        var chains: [(chain: DescriptorChain, bytes: Int)] = []
        var remaining = length
        while remaining > 0 {
            if !mergeable && !chains.isEmpty || chains.count == Int(queue.size) {
                queue.unpop(chains.count)
                return .dropped     // bigger than one chain (or than the whole ring)
            }
            guard let chain = try queue.pop() else {
                queue.unpop(chains.count)
                return .needMoreBuffers
            }
            let bytes = min(chain.writableLength, remaining)
            chains.append((chain, bytes))
            remaining -= bytes
        }
        // num_buffers (le16 at offset 10); 1 without mergeable buffers (§5.1.6.3.1).
        frame.storeBytes(of: UInt16(chains.count).littleEndian, toByteOffset: 10, as: UInt16.self)
        var offset = 0
        for (chain, bytes) in chains {
            var left = bytes
            for b in chain.writable where left > 0 {
                let n = min(Int(b.length), left)
                try? queue.memory.withBytes(at: b.address, count: n) { dst in
                    dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: frame[offset..<(offset + n)]))
                }
                offset += n
                left -= n
            }
            c.dataDescriptors.add(UInt64(chain.writable.count), ordering: .relaxed)
            queue.push(head: chain.head, written: UInt32(bytes))
        }
        return .placed
    }

    // MARK: Control

    func control(_ queue: Virtqueue, index: Int, context: VirtioQueueContext) throws(VirtqueueError) {
        var answered = 0
        while let chain = try queue.pop() {
            defer { answered += 1 }
            // The ack is the last byte of the last writable buffer; without one, nothing to answer in.
            guard let last = chain.writable.last, last.length > 0 else {
                queue.push(head: chain.head, written: 0)
                continue
            }
            var command: [UInt8] = []
            for b in chain.readable where command.count < 64 {
                command += (try? queue.memory.read(at: b.address, count: min(Int(b.length), 64 - command.count))) ?? []
            }
            let ack = execute(command)
            try? queue.memory.store(ack, at: last.address + UInt64(last.length) - 1)
            queue.push(head: chain.head, written: 1)
        }
        if answered > 0 { context.interruptIfNeeded(queue, index: index) }
    }

    /// One control command (class, command, data): VIRTIO_NET_OK or VIRTIO_NET_ERR.
    func execute(_ command: [UInt8]) -> UInt8 {
        guard command.count >= 2 else { return Control.error }
        let data = command[2...]
        switch (command[0], command[1]) {
        case (Control.classMQ, Control.mqPairsSet):
            guard features & Feature.multiQueue != 0, data.count >= 2 else { return Control.error }
            let n = Int(data[data.startIndex]) | Int(data[data.startIndex + 1]) << 8
            guard (1...pairs).contains(n) else { return Control.error }
            activePairs.store(n, ordering: .relaxed)
            backend.setActiveQueues(n)
            return Control.ok
        case (Control.classGuestOffloads, Control.guestOffloadsSet):
            guard features & Feature.ctrlGuestOffloads != 0, data.count >= 8 else { return Control.error }
            let offloads = data.prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            guard offloads & ~(features & Feature.guestOffloads) == 0 else { return Control.error }
            guard backend.setOffloads(Self.tunOffloads(offloads)) else { return Control.error }
            guestOffloads = offloads
            return Control.ok
        default:
            return Control.error
        }
    }
}

extension VirtioNet {
    struct SavedState: Codable {
        var activePairs: Int
        var guestOffloads: UInt64
    }

    /// The pairs the driver enabled and its receive offloads (the features
    /// are the transport's). A frame read from the TAP and not yet placed
    /// is not kept: the guest sees it lost, as on a wire.
    public func saveState() throws(DeviceStateError) -> [UInt8] {
        try DeviceStateCoding.encode(SavedState(activePairs: activePairs.load(ordering: .relaxed), guestOffloads: guestOffloads))
    }

    public func restoreState(_ bytes: [UInt8]) throws(DeviceStateError) {
        let s = try DeviceStateCoding.decode(SavedState.self, bytes, device: "virtio-net")
        guard (1...pairs).contains(s.activePairs), s.activePairs == 1 || features & Feature.multiQueue != 0,
              s.guestOffloads & ~(features & Feature.guestOffloads) == 0 else {
            throw DeviceStateError("virtio-net: the saved queue pairs or offloads do not fit this device")
        }
        activePairs.store(s.activePairs, ordering: .relaxed)
        backend.setActiveQueues(s.activePairs)
        guestOffloads = s.guestOffloads
        backend.setOffloads(Self.tunOffloads(s.guestOffloads))
    }
}

