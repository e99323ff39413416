import Stats
import Glibc
import KVM
import Synchronization
import VMCore

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
    public static let loadAddress = Layout.firmwareLoad
    public static let stackTop = Layout.firmwareStack
    public static let consolePort: UInt16 = 0xE9
    public static let reportPort: UInt16 = 0xF5
    public static let exitPort: UInt16 = 0xF4

    public enum Outcome: Equatable, Sendable, CustomStringConvertible {
        case exited(status: UInt32)
        case halted
        case shutdown
        case internalError(suberror: UInt32, data: [UInt64])
        case failedEntry(reason: UInt64)
        case timedOut

        /// Spelled as Swift's reflection would, written out so that printing
        /// one costs no runtime type lookups at start-up.
        public var description: String {
            switch self {
            case let .exited(status): "exited(status: \(status))"
            case .halted: "halted"
            case .shutdown: "shutdown"
            case let .internalError(suberror, data): "internalError(suberror: \(suberror), data: \(data))"
            case let .failedEntry(reason): "failedEntry(reason: \(reason))"
            case .timedOut: "timedOut"
            }
        }
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
        /// The vCPU's exit telemetry at the end (with telemetry on).
        public var telemetry: TelemetrySample?
        /// The stopped machine: the VM is torn down when the last reference
        /// goes (a caller about to exit can hand that to `detachTeardown`).
        public var machine: RunningMachine?
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
    /// Guest RAM's writes recorded (KVM's dirty log and the devices'), for Diff snapshots.
    var dirtyLog = false

    public init(memorySize: UInt64 = 4 << 20, timeoutSeconds: Double = 10, telemetry: Bool = false, irqchip: Bool = false) {
        self.memorySize = memorySize
        self.timeoutSeconds = timeoutSeconds
        self.telemetry = telemetry
        self.irqchip = irqchip
    }

    /// A firmware machine, built and not started (`run` starts it; tests
    /// drive it through pause and resume).
    struct Built {
        let machine: RunningMachine
        let program: ProgramPorts
        let telemetry: VCPUTelemetry
        let vmStats: KVMStats?
    }

    func build(image: [UInt8], argument: UInt64 = 0, kvmPath: String = "/dev/kvm") throws -> Built {
        let b = try MachineBuilder(kvmPath: kvmPath, ram: [(0, memorySize)], irqchip: irqchip, pit: false, dirtyLog: dirtyLog)
        guard UInt64(image.count) <= memorySize - Self.loadAddress else {
            throw GuestMemoryError(address: Self.loadAddress, length: UInt64(image.count))
        }
        try b.memory.write(image, at: Self.loadAddress)
        try LongModeSetup.writeTables(into: b.memory)

        let program = ProgramPorts(finish: b.finish)
        b.pio.register(program, b.ports(Self.consolePort, Self.consolePort), name: "firmware-console")
        b.pio.register(program, b.ports(Self.exitPort, Self.reportPort), name: "firmware-control")
        let cpuid = irqchip ? CPUIDPolicy(supported: try b.hypervisor.supportedCPUID(), cpus: 1).entries(forCPU: 0) : nil
        try b.addVCPU(cpuid: cpuid) { vcpu in
            var sregs = try vcpu.specialRegisters()
            LongModeSetup.apply(to: &sregs)
            try vcpu.setSpecialRegisters(sregs)
            var regs = Registers()
            regs.rip = Self.loadAddress
            regs.rsp = Self.stackTop
            regs.rdi = argument
            try vcpu.setRegisters(regs)
        }
        let vcpu = b.builtVCPUs[0]
        let telemetry = VCPUTelemetry(vcpu: 0, timing: self.telemetry, kvmStats: self.telemetry ? try? vcpu.stats() : nil)
        let machine = try b.build(telemetry: [telemetry], haltEndsRun: true)
        return Built(machine: machine, program: program, telemetry: telemetry, vmStats: self.telemetry ? try? b.vm.stats() : nil)
    }

    public func run(image: [UInt8], argument: UInt64 = 0, kvmPath: String = "/dev/kvm", observer: (any Observer)? = nil) throws -> Result {
        let built = try build(image: image, argument: argument, kvmPath: kvmPath)
        let (machine, program, telemetry) = (built.machine, built.program, built.telemetry)
        observer?.started(telemetry: [telemetry], vmStats: built.vmStats, devices: Self.devices)

        let start = HostClock.nanoseconds()
        let exit = try machine.run(timeout: timeoutSeconds)
        var result = Result(outcome: .timedOut)
        result.nanoseconds = HostClock.nanoseconds() - start
        switch exit {
        case let .programExited(status): result.outcome = .exited(status: status)
        case .halted: result.outcome = .halted
        case .timeout: result.outcome = .timedOut
        case .internalError:
            switch machine.vcpuFailure {
            case let .internalError(suberror, data)?: result.outcome = .internalError(suberror: suberror, data: data)
            case let .failedEntry(reason)?: result.outcome = .failedEntry(reason: reason)
            case nil: result.outcome = .shutdown
            }
        case let .hostError(detail): throw FirmwareRunError(detail: detail)
        default: result.outcome = .shutdown
        }
        result.console = program.console
        result.reports = program.reports
        result.rip = machine.stoppedAt.first??.rip
        result.exits = Int(telemetry.totalExits)
        if self.telemetry { result.telemetry = telemetry.sample() }
        result.machine = machine
        observer?.finished()
        return result
    }
}

/// A host failure while a firmware program ran (KVM_RUN itself failed).
public struct FirmwareRunError: Error, CustomStringConvertible, Sendable {
    public let detail: String
    public var description: String { detail }
}

/// The firmware program's ports: console bytes, reported values, its exit status.
final class ProgramPorts: BusDevice {
    private let finish: @Sendable (MachineExit) -> Void
    private let state = Mutex<(console: [UInt8], reports: [UInt32])>(([], []))

    init(finish: @escaping @Sendable (MachineExit) -> Void) { self.finish = finish }

    var console: [UInt8] { state.withLock { $0.console } }
    var reports: [UInt32] { state.withLock { $0.reports } }

    func read(address: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0xFF)
    }

    func write(address: UInt64, data: UnsafeRawBufferPointer) {
        let value = UInt32(truncatingIfNeeded: LittleEndian.value(data.prefix(4)))
        switch UInt16(truncatingIfNeeded: address) {
        case FirmwareRunner.consolePort: state.withLock { $0.console.append(contentsOf: data) }
        case FirmwareRunner.reportPort: state.withLock { $0.reports.append(value) }
        case FirmwareRunner.exitPort: finish(.programExited(status: value))
        default: break
        }
    }
}
