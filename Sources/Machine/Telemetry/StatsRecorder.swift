import SystemPackage
import Dispatch
import Glibc
import Histogram
import KVM
import Stats
import VMCore
import Synchronization

/// Samples every vCPU's telemetry at a fixed interval and writes the
/// per-interval deltas, then a final record per vCPU with totals and latency
/// percentiles. The sampler reads the counters with atomic loads on its own
/// thread: it never stops or locks a vCPU.
public final class StatsRecorder: Sendable {
    public let header: StatsHeader
    public let telemetry: [VCPUTelemetry]
    let vmStats: KVMStats?
    let output: Int32?
    let format: StatsFormat
    let startNs: UInt64
    private let state: Mutex<State>
    private let stopSignal = DispatchSemaphore(value: 0)
    private let thread = Mutex<pthread_t?>(nil)

    struct State: Sendable {
        var baseline: [TelemetrySample]
        var baselineVM: [UInt64]
        var previous: [TelemetrySample]
        var previousVM: [UInt64]
        var previousNs: UInt64
        var seq = 0
        var writeError: Int32 = 0
    }

    /// `output`: an open file descriptor the recorder takes over (nil: no
    /// file, only the final records for a summary).
    public init(telemetry: [VCPUTelemetry], vmStats: KVMStats?, devices: [DeviceRange],
                intervalNanoseconds: UInt64, output: Int32?, format: StatsFormat) {
        self.telemetry = telemetry
        self.vmStats = vmStats
        self.output = output
        self.format = format
        var h = StatsHeader()
        h.intervalNanoseconds = intervalNanoseconds
        h.vcpus = telemetry.count
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        h.startUnixNanoseconds = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
        h.timing = telemetry.first?.timing ?? false
        h.devices = devices
        h.kvmVMStats = vmStats?.descriptors.map(StatInfo.init) ?? []
        h.kvmVCPUStats = telemetry.first?.kvmStats?.descriptors.map(StatInfo.init) ?? []
        header = h
        startNs = HostClock.nanoseconds()
        let samples = telemetry.map { $0.sample() }
        let vm = vmStats?.read() ?? []
        state = Mutex(State(baseline: samples, baselineVM: vm, previous: samples, previousVM: vm, previousNs: startNs))
    }

    /// Writes the header and starts sampling (when there is a file).
    public func start() throws {
        guard output != nil else { return }
        write(StatsEncoder.header(header, format: format))
        let t = try startHostThread("the stats sampler") { [self] in sampleLoop() }
        thread.withLock { $0 = t }
    }

    private func sampleLoop() {
        let interval = header.intervalNanoseconds
        var deadline = DispatchTime.now().uptimeNanoseconds + interval
        while stopSignal.wait(timeout: DispatchTime(uptimeNanoseconds: deadline)) == .timedOut {
            write(StatsEncoder.records(takeInterval(partial: false), format: format))
            let now = DispatchTime.now().uptimeNanoseconds
            deadline += interval
            // Fell behind (a stalled host): skip ticks rather than burst.
            if deadline < now { deadline = now + interval - (now - deadline) % interval }
        }
    }

    /// One interval record per vCPU and one for the VM: deltas since the last.
    private func takeInterval(partial: Bool) -> [StatsRecord] {
        let samples = telemetry.map { $0.sample() }
        let vm = vmStats?.read() ?? []
        let now = HostClock.nanoseconds()
        return state.withLock { s in
            s.seq += 1
            var records: [StatsRecord] = []
            for (i, sample) in samples.enumerated() {
                var r = StatsRecord(kind: .interval, vcpu: String(i))
                r.seq = s.seq
                r.time = now - startNs
                r.duration = now - s.previousNs
                r.partial = partial
                Self.fill(&r, sample, minus: s.previous[i], kvm: telemetry[i].kvmStats)
                records.append(r)
            }
            if let vmStats {
                var r = StatsRecord(kind: .interval, vcpu: "vm")
                r.seq = s.seq
                r.time = now - startNs
                r.duration = now - s.previousNs
                r.partial = partial
                Self.fillKVM(&r, vm, minus: s.previousVM, stats: vmStats)
                records.append(r)
            }
            s.previous = samples
            s.previousVM = vm
            s.previousNs = now
            return records
        }
    }

    /// Counter deltas of `sample` over `before` into the record's sections.
    static func fill(_ r: inout StatsRecord, _ sample: TelemetrySample, minus before: TelemetrySample, kvm: KVMStats?) {
        for reason in ExitReason.allCases {
            r["exits", reason.name] = sample.exits[reason.rawValue] &- before.exits[reason.rawValue]
        }
        for (key, count) in sample.ports {
            let d = count &- (before.ports[key] ?? 0)
            if d != 0 { r["io", key.name] = d }
        }
        for (address, count) in sample.mmio {
            let d = count &- (before.mmio[address] ?? 0)
            if d != 0 { r["mmio", hex(address)] = d }
        }
        let overflow = sample.mmioOverflow &- before.mmioOverflow
        if overflow != 0 { r["mmio", "other"] = overflow }
        r["time", "guest_ns"] = sample.guestNanoseconds &- before.guestNanoseconds
        r["time", "vmm_ns"] = sample.vmmNanoseconds &- before.vmmNanoseconds
        if let kvm { fillKVM(&r, sample.kvm, minus: before.kvm, stats: kvm) }
    }

    /// KVM statistics: deltas for cumulative counters and histogram buckets,
    /// the current value for instant and peak values. Zeros are left out.
    static func fillKVM(_ r: inout StatsRecord, _ values: [UInt64], minus before: [UInt64], stats: KVMStats) {
        guard values.count == stats.valueCount, before.count == stats.valueCount else { return }
        for d in stats.descriptors {
            let isCounter = d.kind == .cumulative || d.kind == .linearHistogram || d.kind == .logHistogram
            for i in 0..<d.size {
                let j = d.index + i
                let v = isCounter ? values[j] &- before[j] : values[j]
                if v != 0 { r["kvm", d.valueName(i)] = v }
            }
        }
        if r.sections["kvm"] == nil { r.sections["kvm"] = [:] }
    }

    /// Stops sampling and writes the last (partial) interval and the final
    /// records. Call once every vCPU thread has been joined (the latency
    /// histograms belong to them until then). Returns the final records.
    @discardableResult
    public func finish() -> [StatsRecord] {
        stopSignal.signal()
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
        var records: [StatsRecord] = []
        if output != nil { records += takeInterval(partial: true) }
        let finals = finalRecords()
        records += finals
        if let output {
            write(StatsEncoder.records(records, format: format))
            close(output)
        }
        return finals
    }

    /// Totals since the start, per vCPU, summed over vCPUs ("all") and for
    /// the VM, with latency percentiles per exit reason.
    func finalRecords() -> [StatsRecord] {
        let samples = telemetry.map { $0.sample() }
        let vm = vmStats?.read() ?? []
        let now = HostClock.nanoseconds() - startNs
        return state.withLock { s in
            var finals: [StatsRecord] = []
            var all = StatsRecord(kind: .final, vcpu: "all")
            all.time = now
            var merged: [ExitReason: Histogram<UInt64>] = [:]
            for (i, sample) in samples.enumerated() {
                var r = StatsRecord(kind: .final, vcpu: String(i))
                r.time = now
                Self.fill(&r, sample, minus: s.baseline[i], kvm: telemetry[i].kvmStats)
                let latencies = telemetry[i].latencies
                Self.fillLatency(&r, latencies)
                for (reason, h) in latencies {
                    if merged[reason] == nil { merged[reason] = h } else { merged[reason]!.add(h) }
                }
                for (section, values) in r.sections where section != "latency_ns" {
                    for (k, v) in values {
                        // Instant KVM values (e.g. blocking) sum to "how many vCPUs".
                        all[section, k] = all[section, k] &+ v
                    }
                }
                finals.append(r)
            }
            Self.fillLatency(&all, merged)
            finals.append(all)
            if let vmStats {
                var r = StatsRecord(kind: .final, vcpu: "vm")
                r.time = now
                Self.fillKVM(&r, vm, minus: s.baselineVM, stats: vmStats)
                finals.append(r)
            }
            return finals
        }
    }

    static let percentiles: [(String, Double)] = [("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)]

    static func fillLatency(_ r: inout StatsRecord, _ latencies: [ExitReason: Histogram<UInt64>]) {
        guard !latencies.isEmpty else { return }
        let clock = TSCClock.shared
        for (reason, h) in latencies where h.totalCount > 0 {
            let n = reason.name
            r["latency_ns", "\(n):count"] = h.totalCount
            r["latency_ns", "\(n):min"] = clock.nanoseconds(h.min)
            for (label, p) in percentiles { r["latency_ns", "\(n):\(label)"] = clock.nanoseconds(h.valueAtPercentile(p)) }
            r["latency_ns", "\(n):max"] = clock.nanoseconds(h.max)
            r["latency_ns", "\(n):mean"] = UInt64((h.mean * clock.scale).rounded())
        }
    }

    /// Every vCPU's counters and the KVM statistics now (for live endpoints).
    public func live() -> (vcpus: [TelemetrySample], vm: [UInt64]) {
        (telemetry.map { $0.sample() }, vmStats?.read() ?? [])
    }

    private func write(_ text: String) {
        guard let output else { return }
        var text = text
        text.withUTF8 { buffer in
            do { _ = try FileDescriptor(rawValue: output).writeAll(UnsafeRawBufferPointer(buffer)) } catch {
                let e = (error as? Errno)?.rawValue ?? EIO
                state.withLock { if $0.writeError == 0 { $0.writeError = e } }
            }
        }
    }

    /// errno of the first failed write to the stats file, or 0.
    public var writeError: Int32 { state.withLock { $0.writeError } }
}

extension StatInfo {
    init(_ d: KVMStats.Descriptor) {
        self.init(name: d.name, kind: d.kind.rawValue, unit: d.unit.rawValue, exponent: Int(d.exponent), size: d.size)
    }
}
