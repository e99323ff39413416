import Dispatch
import Glibc
import KVM
import Stats
import Synchronization
import VMCore
import Virtio

/// How a guest's run ended. Each maps to its own svmm exit status.
public enum MachineExit: Sendable, Equatable {
    case powerOff
    case reset
    case panic
    case tripleFault(cpu: Int, rip: UInt64?)
    case timeout
    case interrupted(signal: Int32)
    /// The person at the console typed the escape (Ctrl-A x).
    case consoleEscape
    /// A vCPU halted with no interrupt controller to wake it (firmware programs).
    case halted(cpu: Int)
    /// A firmware program wrote its status to its exit port.
    case programExited(status: UInt32)
    case internalError(cpu: Int, detail: String)
    case hostError(String)
}

/// What KVM reported when it could not go on, kept as data (the firmware
/// probe reads the words; `MachineExit.internalError` says it in words).
public enum VCPUFailure: Sendable, Equatable {
    case internalError(suberror: UInt32, data: [UInt64])
    case failedEntry(reason: UInt64)
}

/// Where a run's outcome is decided: the first `finish` wins and wakes the
/// waiter. Devices get it (as a closure) before the machine exists.
public final class RunOutcome: Sendable {
    private let outcome = Mutex<MachineExit?>(nil)
    private let finished = DispatchSemaphore(value: 0)
    /// Set with the outcome: what each vCPU loop reads before entering the
    /// guest again, so no vCPU runs on (and adds exits) once the run has ended.
    private let ended = Atomic<Bool>(false)

    public init() {}

    public func finish(_ exit: MachineExit) {
        let first = outcome.withLock { o -> Bool in
            if o != nil { return false }
            o = exit
            return true
        }
        ended.store(true, ordering: .releasing)
        if first { finished.signal() }
    }

    var hasEnded: Bool { ended.load(ordering: .acquiring) }

    /// Waits for an outcome; `.timeout` if none comes within `seconds`.
    func wait(seconds: Double?) -> MachineExit {
        let timedOut = seconds.map { finished.wait(timeout: .now() + $0) == .timedOut } ?? { finished.wait(); return false }()
        if timedOut { finish(.timeout) }
        return outcome.withLock { $0 } ?? .hostError("no outcome")
    }
}

/// A vCPU's run state, as Firecracker's vstate/vcpu.rs keeps it: the machine
/// asks (`requested`), the vCPU thread answers (`current`) once it is there.
final class VCPUControl: Sendable {
    enum State: UInt8 { case running, paused, stopped }
    let requested = Atomic<UInt8>(State.running.rawValue)
    let current = Atomic<UInt8>(State.running.rawValue)
    /// Wakes a paused vCPU thread.
    let wake: EventFD
    let thread = Mutex<pthread_t?>(nil)

    init() throws(HostError) { wake = try EventFD() }

    var wanted: State { State(rawValue: requested.load(ordering: .acquiring))! }
    var now: State { State(rawValue: current.load(ordering: .acquiring))! }
}

/// A built machine: its vCPUs, buses and devices, and the one exit switch.
/// `start()` runs a thread per vCPU and per virtio device; `pause()`,
/// `resume()` and `stop(_:)` drive every vCPU through its state machine
/// (running → paused → running, any → stopped); `wait` ends the run.
public final class RunningMachine: Sendable {
    public static let kickSignal = SIGUSR1

    let vm: VirtualMachine
    /// Kept for the VM's life: KVM maps it (see GuestMemory.register).
    let memory: GuestMemory
    let vcpus: [VCPU]
    let pio: Bus
    let mmio: Bus
    public let telemetry: [VCPUTelemetry]
    public let virtio: [VirtioPCIDevice]
    /// No in-kernel irqchip: a halted vCPU can never wake, so HLT ends the run.
    let haltEndsRun: Bool
    /// The in-kernel irqchip and PIT, whose state a snapshot saves with the vCPUs'.
    let irqchip: Bool
    let pit: Bool
    let outcome: RunOutcome
    let controls: [VCPUControl]
    private let deviceThreads = Mutex<[pthread_t]>([])
    private let stopped = Mutex<[VCPUState?]>([])
    private let failure = Mutex<VCPUFailure?>(nil)
    private let started = Atomic<Bool>(false)

    init(vm: VirtualMachine, memory: GuestMemory, vcpus: [VCPU], pio: Bus, mmio: Bus, telemetry: [VCPUTelemetry],
         virtio: [VirtioPCIDevice], haltEndsRun: Bool, outcome: RunOutcome, irqchip: Bool, pit: Bool) throws(HostError) {
        self.vm = vm
        self.memory = memory
        self.vcpus = vcpus
        self.pio = pio
        self.mmio = mmio
        self.telemetry = telemetry
        self.virtio = virtio
        self.haltEndsRun = haltEndsRun
        self.irqchip = irqchip
        self.pit = pit
        self.outcome = outcome
        var controls: [VCPUControl] = []
        for _ in vcpus { controls.append(try VCPUControl()) }
        self.controls = controls
        VCPU.installKickHandler(signal: Self.kickSignal)
    }

    /// The devices on both buses, for attributing exits to them.
    public var deviceRanges: [DeviceRange] {
        func ranges(_ bus: Bus, _ name: String) -> [DeviceRange] {
            bus.ranges.map { DeviceRange(bus: name, first: $0.range.lowerBound, last: $0.range.upperBound, name: $0.name) }
        }
        return ranges(pio, "io") + ranges(mmio, "mmio")
    }

    /// Each vCPU's RIP and interrupt state once the run has stopped them (for
    /// timeout reports); nil for a vCPU KVM would not read back.
    public var stoppedAt: [VCPUState?] { stopped.withLock { $0 } }

    /// What KVM said when a vCPU failed, if one did.
    public var vcpuFailure: VCPUFailure? { failure.withLock { $0 } }

    /// Starts the device threads, then a thread per vCPU.
    public func start() throws(HostError) {
        precondition(!started.exchange(true, ordering: .acquiringAndReleasing), "a machine runs once")
        for device in virtio {
            let t = try startHostThread("virtio device \(device.device.deviceID)") { device.run() }
            deviceThreads.withLock { $0.append(t) }
        }
        for (vcpu, control) in zip(vcpus, controls) {
            let t = try startHostThread("vCPU \(vcpu.id)") { [self] in
                VCPU.unblockKickSignal(Self.kickSignal)
                runLoop(vcpu, control)
            }
            control.thread.withLock { $0 = t }
        }
    }

    /// Ends the run from outside (SIGINT/SIGTERM, the console escape).
    public func stop(_ exit: MachineExit) { outcome.finish(exit) }

    /// Returns once every vCPU is out of `KVM_RUN` and parked, and every
    /// device has stopped processing its queues and injecting interrupts.
    /// Before `start()`, the vCPUs park before their first entry.
    public func pause() {
        for (vcpu, control) in zip(vcpus, controls) where control.wanted == .running {
            control.requested.store(VCPUControl.State.paused.rawValue, ordering: .releasing)
            kick(vcpu, control)
        }
        // Each thread answers once it is out of KVM_RUN (or has stopped).
        while started.load(ordering: .acquiring), controls.contains(where: { $0.now == .running }) { usleep(100) }
        // The guest's clock runs on through the pause (as Firecracker's);
        // kvm-clock tells it the host stopped it (Firecracker and QEMU make
        // the same call), so it reports no soft lockup or RCU stall on resume.
        for vcpu in vcpus { vcpu.markGuestStopped() }
        for device in virtio { device.pause() }
    }

    /// Continues a paused machine: devices first, then the vCPUs.
    public func resume() {
        for device in virtio { device.resume() }
        for control in controls where control.wanted == .paused {
            control.requested.store(VCPUControl.State.running.rawValue, ordering: .releasing)
            control.wake.signal()
        }
    }

    /// KVM's state of every vCPU, and of the VM's irqchip, kvm-clock and PIT
    /// where it has them, read while paused (`pause()` first) or before the start.
    public func saveKVMState() throws -> (vcpus: [VCPUSavedState], vm: VMSavedState?) {
        precondition(!started.load(ordering: .acquiring) || isPaused, "save the state of a paused machine")
        let msrs = try vm.hypervisor.msrIndexList()
        let vcpuStates = try vcpus.map { v throws(KVMError) in try v.saveState(msrIndices: msrs, lapic: irqchip) }
        return (vcpuStates, irqchip ? try vm.saveState(pit: pit) : nil)
    }

    /// Sets the state `saveKVMState` read (of a machine built the same way):
    /// the VM's first, then each vCPU's. Before the start or while paused.
    public func restoreKVMState(vcpus states: [VCPUSavedState], vm vmState: VMSavedState?) throws {
        precondition(!started.load(ordering: .acquiring) || isPaused, "restore into a paused machine")
        guard states.count == vcpus.count else { throw SavedStateError(description: "\(states.count) vCPUs saved, the machine has \(vcpus.count)") }
        guard (vmState != nil) == irqchip, (vmState?.pit != nil) == (irqchip && pit) else {
            throw SavedStateError(description: "the saved VM state and this machine differ in irqchip or PIT")
        }
        if let vmState { try vm.restoreState(vmState) }
        for (v, s) in zip(vcpus, states) { try v.restoreState(s) }
    }

    /// The machine's shape and KVM state as a snapshot's state file holds
    /// them (devices' states: none yet). Paused, or before the start.
    public func snapshotState() throws -> SnapshotState {
        let (vcpuStates, vmState) = try saveKVMState()
        let shape = SnapshotState.MachineShape(cpus: vcpus.count, ram: memory.regions.map { ($0.guestAddress, $0.size) },
                                               irqchip: irqchip, pit: pit)
        return SnapshotState(machine: shape, vcpus: vcpuStates, vm: vmState)
    }

    /// Restores a snapshot into this machine, built with the same shape and
    /// paused before its start: guest RAM becomes a private mapping of
    /// `memoryFile`, then the KVM state is set.
    public func restore(_ state: SnapshotState, memoryFile: Int32) throws {
        let shape = SnapshotState.MachineShape(cpus: vcpus.count, ram: memory.regions.map { ($0.guestAddress, $0.size) },
                                               irqchip: irqchip, pit: pit)
        guard shape == state.machine else { throw SavedStateError(description: "the snapshot's machine (\(state.machine.cpus) vCPUs, \(state.machine.ramBytes >> 20) MiB) is not this one") }
        try memory.mapPrivately(memoryFile)
        try restoreKVMState(vcpus: state.vcpus, vm: state.vm)
    }

    /// Whether `pause()` holds the machine now.
    public var isPaused: Bool { controls.allSatisfy { $0.wanted == .paused } }

    /// Asks a vCPU to leave the guest: immediate_exit for one about to enter,
    /// the kick signal for one inside (the Firecracker/kvmtool protocol), and
    /// its wake event for one parked.
    func kick(_ vcpu: VCPU, _ control: VCPUControl) {
        vcpu.requestExit()
        if let t = control.thread.withLock({ $0 }) { pthread_kill(t, Self.kickSignal) }
        control.wake.signal()
    }

    /// Waits for the run's outcome (or `timeout` seconds), then stops and
    /// joins every thread and gives the devices a last look at their queues.
    public func wait(timeout: Double?) -> MachineExit {
        let exit = outcome.wait(seconds: timeout)
        // The device threads stop first, so no interrupt of theirs lands on a
        // vCPU between its stop and the read of its state (each thread reads
        // its own as it leaves KVM_RUN): what the states show was there.
        for device in virtio { device.stop() }
        for t in deviceThreads.withLock({ $0 }) { pthread_join(t, nil) }
        stopped.withLock { $0 = Array(repeating: nil, count: vcpus.count) }
        for (vcpu, control) in zip(vcpus, controls) {
            control.requested.store(VCPUControl.State.stopped.rawValue, ordering: .releasing)
            kick(vcpu, control)
        }
        for control in controls { if let t = control.thread.withLock({ $0 }) { pthread_join(t, nil) } }
        for device in virtio { device.flush() }
        let read = stopped.withLock { $0 }
        let states = zip(vcpus, read).map { vcpu, state in state ?? VCPUState.read(vcpu) }
        stopped.withLock { $0 = states }
        return exit
    }

    /// `start()`, then `wait(timeout:)`.
    public func run(timeout: Double?) throws(HostError) -> MachineExit {
        try start()
        return wait(timeout: timeout)
    }

    /// Where a vCPU thread parks while paused (its last exit completed, see
    /// `runLoop`): it answers, clears its exit request and sleeps on its wake
    /// event until asked to run or stop.
    func park(_ vcpu: VCPU, _ control: VCPUControl) {
        vcpu.clearExitRequest()
        control.current.store(VCPUControl.State.paused.rawValue, ordering: .releasing)
        var p = pollfd(fd: control.wake.fd, events: Int16(POLLIN), revents: 0)
        while control.wanted == .paused {
            _ = poll(&p, 1, -1)
            control.wake.drain()
        }
        vcpu.clearExitRequest()
        if control.wanted == .running { control.current.store(VCPUControl.State.running.rawValue, ordering: .releasing) }
    }

    /// The exit loop of one vCPU: one switch over exit reasons, each arm a
    /// call into the bus or a verdict (kvmtool's kvm_cpu__start, in Swift),
    /// with the state machine checked before each entry.
    func runLoop(_ vcpu: VCPU, _ control: VCPUControl) {
        defer { control.current.store(VCPUControl.State.stopped.rawValue, ordering: .releasing) }
        let telemetry = telemetry[vcpu.id]
        // Whether the last KVM_RUN returned without an exit to handle. A
        // vCPU parks only then: before parking it enters once more with
        // immediate_exit set, so KVM completes the exit svmm last handled (an
        // IN's or an MMIO read's value into its register, RIP past the
        // instruction; a string or split access may exit again, and that
        // exit is handled like any other) and returns. A paused vCPU's
        // registers are whole.
        var completed = false
        while !outcome.hasEnded {
            switch control.wanted {
            case .running: break
            case .paused:
                if completed {
                    park(vcpu, control)
                    completed = false
                    continue
                }
                vcpu.requestExit()
            case .stopped:
                let state = VCPUState.read(vcpu)
                stopped.withLock { if vcpu.id < $0.count { $0[vcpu.id] = state } }
                return
            }
            let exit: VCPUExit
            telemetry.willEnter()
            do { exit = try vcpu.run() } catch {
                outcome.finish(.hostError("\(error)"))
                return
            }
            telemetry.didExit(exit)
            if case .interrupted = exit { completed = true } else { completed = false }
            switch exit {
            case let .io(port, isWrite, size, count, data):
                for i in 0..<count {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: data[(i * size)..<((i + 1) * size)])
                    pio.access(UInt64(port), isWrite: isWrite, data: slice)
                }
            case let .mmio(address, isWrite, data):
                mmio.access(address, isWrite: isWrite, data: data)
            case .interrupted:
                // A kick whose pause was taken back before this thread parked
                // (resume right after start or pause) leaves immediate_exit set:
                // clear it, or every KVM_RUN returns at once. The loop's top
                // sees a pause asked for since.
                if control.wanted == .running { vcpu.clearExitRequest() }
            case .halt:
                if haltEndsRun { outcome.finish(.halted(cpu: vcpu.id)); return }
            case .shutdown:
                outcome.finish(.tripleFault(cpu: vcpu.id, rip: try? vcpu.registers().rip))
                return
            case let .systemEvent(event):
                switch event {
                case .shutdown: outcome.finish(.powerOff)
                case .reset: outcome.finish(.reset)
                case let .other(type): outcome.finish(.internalError(cpu: vcpu.id, detail: "system event \(type)"))
                }
                return
            case let .internalError(suberror, data):
                failure.withLock { $0 = .internalError(suberror: suberror, data: data) }
                outcome.finish(.internalError(cpu: vcpu.id, detail: describeInternalError(vcpu, suberror: suberror)))
                return
            case let .failEntry(reason):
                failure.withLock { $0 = .failedEntry(reason: reason) }
                outcome.finish(.internalError(cpu: vcpu.id, detail: "VM entry failed, hardware reason 0x\(String(reason, radix: 16))"))
                return
            case let .other(reason):
                outcome.finish(.internalError(cpu: vcpu.id, detail: "unhandled exit reason \(reason)"))
                return
            }
        }
    }

    /// "emulation failure at RIP 0x… (bytes: 0f c7 …)": what a person needs to
    /// see which instruction this KVM could not run.
    func describeInternalError(_ vcpu: VCPU, suberror: UInt32) -> String {
        let kind = suberror == 1 ? "emulation failure" : "suberror \(suberror)"
        guard let rip = try? vcpu.registers().rip else { return kind }
        var text = "\(kind) at RIP 0x\(String(rip, radix: 16))"
        if let gpa = (try? vcpu.translate(rip)) ?? nil, let bytes = try? memory.read(at: gpa, count: 15) {
            text += " (instruction bytes: \(bytes.map { String($0, radix: 16).leftPadding(2, with: "0") }.joined(separator: " ")))"
        }
        return text
    }
}
