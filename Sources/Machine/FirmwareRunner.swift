import CKVM
import Dispatch
import Glibc
import KVM
import Synchronization

/// Runs a flat 64-bit test program from `Firmware/` on one vCPU.
///
/// The program is loaded at `loadAddress` and entered in long mode with the
/// first 4 GiB identity-mapped, `rdi` = the caller's argument and a stack
/// below 0x80000. It talks to svmm through three ports:
///
/// | port | access | meaning |
/// | --- | --- | --- |
/// | 0xE9 | out byte | console character |
/// | 0xF5 | out dword | a reported value (e.g. the exception vector a handler saw) |
/// | 0xF4 | out dword | the program is done; the value is its status |
///
/// Any other port or MMIO access is counted and ignored (reads return all-ones),
/// which makes a loop of `out` instructions an exit benchmark.
public struct FirmwareRunner: Sendable {
    public static let loadAddress: UInt64 = 0x10_0000
    public static let stackTop: UInt64 = 0x8_0000
    public static let consolePort: UInt16 = 0xE9
    public static let reportPort: UInt16 = 0xF5
    public static let exitPort: UInt16 = 0xF4

    public enum Outcome: Equatable, Sendable {
        case exited(status: UInt32)
        case halted
        case shutdown
        case internalError(suberror: UInt32, data: [UInt64])
        case failedEntry(reason: UInt64)
        case timedOut
    }

    public struct Result: Sendable {
        public var outcome: Outcome
        public var reports: [UInt32] = []
        public var console: [UInt8] = []
        /// Exits to userspace, all reasons.
        public var exits: Int = 0
        /// Wall time from the first entry to the final exit.
        public var nanoseconds: UInt64 = 0
        /// Guest RIP when it stopped, where it could be read.
        public var rip: UInt64?
        /// The vCPU's exit telemetry at the end.
        public var telemetry: TelemetrySample?
    }

    /// Told when the program starts and after it stopped (telemetry output).
    public protocol Observer {
        func started(telemetry: [VCPUTelemetry], vmStats: KVMStats?, devices: [DeviceRange])
        func finished()
    }

    /// The runner's own ports, named for exit attribution.
    public static let devices = [
        DeviceRange(bus: "io", first: UInt64(consolePort), last: UInt64(consolePort), name: "firmware-console"),
        DeviceRange(bus: "io", first: UInt64(exitPort), last: UInt64(reportPort), name: "firmware-control"),
    ]

    public var memorySize: UInt64 = 4 << 20
    public var timeoutSeconds: Double = 10
    /// Measure exit latencies and open KVM's statistics.
    public var telemetry = false
    /// An in-kernel irqchip (local APIC): for programs that take interrupts,
    /// such as the HLT benchmark's timer. Without it HLT exits to svmm and
    /// ends the program.
    public var irqchip = false

    public init(memorySize: UInt64 = 4 << 20, timeoutSeconds: Double = 10, telemetry: Bool = false, irqchip: Bool = false) {
        self.memorySize = memorySize
        self.timeoutSeconds = timeoutSeconds
        self.telemetry = telemetry
        self.irqchip = irqchip
    }

    public func run(image: [UInt8], argument: UInt64 = 0, kvmPath: String = "/dev/kvm", observer: (any Observer)? = nil) throws -> Result {
        let hypervisor = try Hypervisor(path: kvmPath)
        let vm = try hypervisor.createVM()
        try? vm.setTSSAddress(0xFFFB_D000)
        if irqchip { try vm.createIRQChip() }
        let memory = try GuestMemory(size: memorySize)
        try memory.register(with: vm)
        guard UInt64(image.count) <= memorySize - Self.loadAddress else {
            throw GuestMemoryError(address: Self.loadAddress, length: UInt64(image.count))
        }
        try memory.write(image, at: Self.loadAddress)
        try LongModeSetup.writeTables(into: memory)

        let vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.getSpecialRegisters()
        LongModeSetup.apply(to: &sregs)
        try vcpu.setSpecialRegisters(sregs)
        var regs = kvm_regs()
        regs.rip = Self.loadAddress
        regs.rsp = Self.stackTop
        regs.rflags = 0x2
        regs.rdi = argument
        try vcpu.setRegisters(regs)
        if irqchip {
            try vcpu.setCPUID(CPUIDPolicy(supported: try hypervisor.supportedCPUID(), cpus: 1).entries(forCPU: 0))
        }
        let telemetry = VCPUTelemetry(vcpu: 0, timing: self.telemetry, kvmStats: self.telemetry ? try? vcpu.stats() : nil)
        observer?.started(telemetry: [telemetry], vmStats: self.telemetry ? try? vm.stats() : nil, devices: Self.devices)

        // A watchdog kicks the vCPU out of KVM_RUN if the program overruns.
        let kick = VCPUKick(vcpu: vcpu)
        let watchdog = DispatchWorkItem { kick.fire() }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeoutSeconds, execute: watchdog)
        defer { watchdog.cancel() }

        var result = Result(outcome: .timedOut)
        let start = DispatchTime.now().uptimeNanoseconds
        loop: while true {
            telemetry.willEnter()
            let exit = try vcpu.run()
            telemetry.didExit(exit)
            switch exit {
            case let .io(port, isWrite, size, _, data):
                if !isWrite {
                    data.initializeMemory(as: UInt8.self, repeating: 0xFF)
                    continue
                }
                switch port {
                case Self.consolePort:
                    result.console.append(contentsOf: data)
                case Self.reportPort:
                    result.reports.append(Self.value(data, size: size))
                case Self.exitPort:
                    result.outcome = .exited(status: Self.value(data, size: size))
                    break loop
                default:
                    continue
                }
            case let .mmio(_, isWrite, data):
                if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xFF) }
            case .halt:
                result.outcome = .halted
                break loop
            case .shutdown:
                result.outcome = .shutdown
                break loop
            case let .internalError(suberror, data):
                result.outcome = .internalError(suberror: suberror, data: data)
                break loop
            case let .failEntry(reason):
                result.outcome = .failedEntry(reason: reason)
                break loop
            case .interrupted:
                if kick.fired {
                    result.outcome = .timedOut
                    break loop
                }
            case .systemEvent, .other:
                result.outcome = .shutdown
                break loop
            }
        }
        result.nanoseconds = DispatchTime.now().uptimeNanoseconds - start
        result.rip = try? vcpu.getRegisters().rip
        result.telemetry = telemetry.sample()
        result.exits = Int(result.telemetry!.totalExits)
        observer?.finished()
        return result
    }

    static func value(_ data: UnsafeMutableRawBufferPointer, size: Int) -> UInt32 {
        var v: UInt32 = 0
        for i in 0..<min(size, 4, data.count) { v |= UInt32(data[i]) << (8 * i) }
        return v
    }
}

/// Stops one vCPU from another thread: sets immediate_exit, then signals the
/// thread that runs it so a guest already executing returns with EINTR.
final class VCPUKick: Sendable {
    static let signal = SIGUSR1
    private let vcpu: VCPU
    private let thread: pthread_t
    private let latch = Atomic<Bool>(false)

    /// Must be created on the thread that runs the vCPU.
    init(vcpu: VCPU) {
        self.vcpu = vcpu
        self.thread = pthread_self()
        VCPU.installKickHandler(signal: Self.signal)
        VCPU.unblockKickSignal(Self.signal)
    }

    var fired: Bool { latch.load(ordering: .acquiring) }

    func fire() {
        latch.store(true, ordering: .releasing)
        vcpu.requestExit()
        pthread_kill(thread, Self.signal)
    }
}
