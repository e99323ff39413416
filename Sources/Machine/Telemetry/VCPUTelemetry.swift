import Glibc
import Histogram
import KVM
import Stats
import Synchronization
import VMCore

/// Exit telemetry of one vCPU, recorded on that vCPU's thread.
///
/// Counters live in one block of UInt64 slots written only by the vCPU's
/// thread with relaxed atomic stores and read by the stats sampler at any
/// time with atomic loads: the exit path takes no lock and allocates nothing.
/// Latency histograms (one per exit reason, HDR, 1 ns to 10 s at two
/// significant digits) are plain values owned by the vCPU thread and read
/// only after it has been joined.
///
/// Block layout (UInt64 slots):
///
/// | slots | content |
/// | --- | --- |
/// | 0..<16 | exits by `ExitReason` |
/// | 16, 17 | nanoseconds in `KVM_RUN`, nanoseconds handling exits |
/// | 18 | MMIO exits to addresses beyond the address table |
/// | 32..<160 | MMIO address table: 64 × (address + 1, count), open addressing |
/// | 256..<2304 | bitmap of the port/direction slots in use (131,072 bits) |
/// | 2304..<133376 | port exits: slot `port × 2 + (write ? 1 : 0)` |
public final class VCPUTelemetry: @unchecked Sendable {
    // SAFETY (@unchecked Sendable): `block` is written only by the vCPU's
    // thread (single writer) through atomic stores and read elsewhere through
    // atomic loads. `histograms`, `entered`, `lastReturn` and `lastReason` are
    // touched only by the vCPU thread, and by others only after it was joined.
    public let vcpu: Int
    /// Whether latencies and guest/svmm time are measured (two clock reads
    /// per exit); counts are always kept.
    public let timing: Bool
    /// KVM's statistics for this vCPU, where the kernel has them.
    public let kvmStats: KVMStats?
    let block: UnsafeMutablePointer<UInt64>
    private var histograms: [Histogram<UInt64>?]
    private var entered: UInt64 = 0
    private var lastReturn: UInt64 = 0
    private var lastReason = 0

    static let reasonBase = 0
    static let guestSlot = 16
    static let vmmSlot = 17
    static let mmioOverflowSlot = 18
    static let mmioBase = 32
    static let mmioSlots = 64
    static let bitmapBase = 256
    /// One bit per port/direction slot: 65,536 ports × 2 directions / 64 bits a word.
    static let bitmapWords = 65536 * 2 / 64
    static let portBase = bitmapBase + bitmapWords
    static let blockSlots = portBase + 65536 * 2
    static let blockBytes = blockSlots * 8
    /// Latencies (in TSC ticks) above this are recorded as this (a stopped-and-resumed vCPU).
    static let highestLatency: UInt64 = 100_000_000_000

    public init(vcpu: Int, timing: Bool, kvmStats: KVMStats? = nil) {
        if timing { _ = TSCClock.shared }    // calibrate before the guest runs
        self.vcpu = vcpu
        self.timing = timing
        self.kvmStats = kvmStats
        // Zeroed and backed lazily: untouched port slots cost no memory.
        let p = mmap(nil, Self.blockBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(p != MAP_FAILED, "cannot map the telemetry block")
        // SAFETY: a fresh anonymous mapping of blockSlots UInt64s, bound once
        // and unmapped only in deinit; no other view of it exists.
        block = p!.bindMemory(to: UInt64.self, capacity: Self.blockSlots)
        // Without timing there are no latencies: no array (nor its generic
        // type's metadata, a runtime lookup at start-up) is made.
        histograms = timing ? Array(repeating: nil, count: ExitReason.allCases.count) : []
    }

    deinit { munmap(block, Self.blockBytes) }

    // MARK: The exit path (vCPU thread only)

    /// Call just before `KVM_RUN`: ends the handling time of the previous exit.
    @inline(__always)
    public func willEnter() {
        guard timing else { return }
        let now = HostClock.tsc()
        if lastReturn != 0 {
            let spent = now &- lastReturn
            Counter.add(block + Self.vmmSlot, spent)
            if histograms[lastReason] == nil {
                histograms[lastReason] = Histogram(lowestDiscernibleValue: 1, highestTrackableValue: Self.highestLatency, numberOfSignificantValueDigits: .two)
            }
            _ = histograms[lastReason]!.record(min(spent, Self.highestLatency))
            lastReturn = 0
        }
        entered = now
    }

    /// Call as soon as `KVM_RUN` returns, with what it returned.
    @inline(__always)
    public func didExit(_ exit: VCPUExit) {
        if timing {
            let now = HostClock.tsc()
            Counter.add(block + Self.guestSlot, now &- entered)
            lastReturn = now
        }
        let reason = ExitReason(exit)
        lastReason = reason.rawValue
        Counter.add(block + Self.reasonBase + reason.rawValue, 1)
        if case let .io(port, isWrite, _, _, _) = exit {
            let slot = Int(port) * 2 + (isWrite ? 1 : 0)
            let counter = block + Self.portBase + slot
            if counter.pointee == 0 {
                let word = block + Self.bitmapBase + slot / 64
                Counter.store(word, word.pointee | (1 << UInt64(slot % 64)))
            }
            Counter.add(counter, 1)
        } else if case let .mmio(address, _, _) = exit {
            countMMIO(address)
        }
    }

    private func countMMIO(_ address: UInt64) {
        let key = address &+ 1
        var i = Int(truncatingIfNeeded: (address >> 2) &* 0x9E37_79B9) & (Self.mmioSlots - 1)
        for _ in 0..<Self.mmioSlots {
            let entry = block + Self.mmioBase + i * 2
            if entry.pointee == key {
                Counter.add(entry + 1, 1)
                return
            }
            if entry.pointee == 0 {
                // Count first, then publish the address (release), so a
                // reader that sees the address sees its count.
                Counter.add(entry + 1, 1)
                Counter.store(entry, key)
                return
            }
            i = (i + 1) & (Self.mmioSlots - 1)
        }
        Counter.add(block + Self.mmioOverflowSlot, 1)
    }

    // MARK: Reading (any thread)

    /// The counters now. Safe from any thread while the vCPU runs.
    public func sample() -> TelemetrySample {
        var s = TelemetrySample(vcpu: vcpu)
        for r in ExitReason.allCases { s.exits[r.rawValue] = Counter.load(block + Self.reasonBase + r.rawValue) }
        s.guestNanoseconds = TSCClock.shared.nanoseconds(Counter.load(block + Self.guestSlot))
        s.vmmNanoseconds = TSCClock.shared.nanoseconds(Counter.load(block + Self.vmmSlot))
        s.mmioOverflow = Counter.load(block + Self.mmioOverflowSlot)
        for w in 0..<Self.bitmapWords {
            var bits = Counter.load(block + Self.bitmapBase + w)
            while bits != 0 {
                let slot = w * 64 + bits.trailingZeroBitCount
                bits &= bits - 1
                s.ports[PortKey(port: UInt16(slot / 2), isWrite: slot % 2 == 1)] = Counter.load(block + Self.portBase + slot)
            }
        }
        for i in 0..<Self.mmioSlots {
            let key = Counter.load(block + Self.mmioBase + i * 2)
            if key != 0 { s.mmio[key - 1] = Counter.load(block + Self.mmioBase + i * 2 + 1) }
        }
        if let kvmStats { s.kvm = kvmStats.read() }
        return s
    }

    /// Exits to userspace so far, all reasons (what `sample()` sums,
    /// without building the rest of a sample).
    public var totalExits: UInt64 {
        ExitReason.allCases.reduce(0) { $0 + Counter.load(block + Self.reasonBase + $1.rawValue) }
    }

    /// Latency histograms by reason, in TSC ticks (`TSCClock` converts).
    /// Only after the vCPU thread was joined.
    public var latencies: [ExitReason: Histogram<UInt64>] {
        var result: [ExitReason: Histogram<UInt64>] = [:]
        for r in ExitReason.allCases where r.rawValue < histograms.count { if let h = histograms[r.rawValue] { result[r] = h } }
        return result
    }
}

/// Converts time-stamp counter ticks to nanoseconds with one ratio (so
/// converted counters stay consistent: deltas of converted totals add up
/// exactly): the rate KVM reports (`KVM_GET_TSC_KHZ`, which the builder
/// hands over with its first vCPU), or, where KVM gives none, one measured
/// against CLOCK_MONOTONIC over 20 ms.
public final class TSCClock: Sendable {
    private static let kvmRate = Mutex<UInt32?>(nil)

    /// The TSC rate KVM reported; used if given before the clock's first use.
    static func useKVMRate(kHz: UInt32) {
        guard kHz > 0 else { return }
        kvmRate.withLock { if $0 == nil { $0 = kHz } }
    }

    public static let shared = TSCClock()
    /// Nanoseconds per tick.
    public let scale: Double
    /// Where the rate came from: "KVM_GET_TSC_KHZ" or "calibrated".
    public let source: String

    init() {
        if let kHz = Self.kvmRate.withLock({ $0 }) {
            scale = 1_000_000 / Double(kHz)
            source = "KVM_GET_TSC_KHZ"
            return
        }
        source = "calibrated"
        scale = Self.calibrate()
    }

    /// Nanoseconds per tick, measured against CLOCK_MONOTONIC over 20 ms.
    static func calibrate() -> Double {
        let n0 = HostClock.nanoseconds(), t0 = HostClock.tsc()
        var n1 = n0, t1 = t0
        while n1 - n0 < 20_000_000 {
            n1 = HostClock.nanoseconds()
            t1 = HostClock.tsc()
        }
        return t1 > t0 ? Double(n1 - n0) / Double(t1 - t0) : 1
    }

    public func nanoseconds(_ ticks: UInt64) -> UInt64 { UInt64(Double(ticks) * scale) }
}

extension ExitReason {
    public init(_ exit: VCPUExit) {
        self = switch exit {
        case .io: .io
        case .mmio: .mmio
        case .halt: .hlt
        case .interrupted: .intr
        case .shutdown: .shutdown
        case .systemEvent: .systemEvent
        case .internalError: .internalError
        case .failEntry: .failEntry
        case .other: .unknown
        }
    }
}
