import CKVM
import Dispatch
import Glibc
import KVM
import Synchronization

/// A running x86 PC for a Linux guest: RAM, in-kernel irqchip and PIT, COM1,
/// ACPI power control, one thread per vCPU.
public final class LinuxMachine: Sendable {
    public let config: BootConfiguration
    let vm: VirtualMachine
    let memory: GuestMemory
    let pio: Bus
    let mmio: Bus
    public let serial: Serial16550
    public let bootMarker: BootMarker
    /// How the kernel is entered (Linux 64-bit entry or PVH, and whether a
    /// bzImage's payload was decompressed on the host).
    public let entry: LinuxLoader.EntryState
    let vcpus: [VCPU]
    private let outcome = Mutex<MachineExit?>(nil)
    /// Set with the outcome; the one thing every vCPU loop reads per exit,
    /// so it is an atomic, not the outcome's lock.
    private let ended = Atomic<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    /// Builds the machine and loads the kernel; nothing runs yet.
    /// The virtio devices on PCI, each with its own thread while running.
    public let virtio: [VirtioPCIDevice]

    /// `consoleOutput` gets COM1's bytes; `virtioConsoleOutput` the
    /// virtio-console's (in blocks), and `consoleInput` is the file
    /// descriptor the virtio-console reads (with `config.console == .virtio`).
    public init(config: BootConfiguration, kvmPath: String = "/dev/kvm",
                consoleOutput: @escaping @Sendable (UInt8) -> Void,
                virtioConsoleOutput: (@Sendable (UnsafeRawBufferPointer) -> Void)? = nil,
                consoleInput: Int32? = nil,
                onBootMarker: @escaping @Sendable (UInt64) -> Void = { _ in }) throws {
        self.config = config
        let hypervisor = try Hypervisor(path: kvmPath)
        let vm = try hypervisor.createVM()
        self.vm = vm
        try? vm.setTSSAddress(0xFFFB_D000)
        try vm.createIRQChip()
        try vm.createPIT()

        memory = try GuestMemory(layout: Layout.ramRegions(size: config.memoryBytes))
        let entry = try LinuxLoader.load(config, into: memory)
        self.entry = entry
        try memory.register(with: vm)

        let finish = Self.finisher()
        serial = Serial16550(output: consoleOutput, setIRQ: { high in
            try? vm.setIRQLine(Serial16550.com1IRQ, high: high)
        })
        var pio = Bus(), mmio = Bus()
        func ports(_ first: UInt16, _ last: UInt16) -> ClosedRange<UInt64> { UInt64(first)...UInt64(last) }
        pio.register(serial, ports(Serial16550.com1Base, Serial16550.com1Base + 7), name: "serial-com1")
        let power = PowerControl { request in finish.value?(request == .powerOff ? .powerOff : .reset) }
        pio.register(power, ports(ACPITables.sleepControlPort, ACPITables.resetPort), name: "acpi-power")
        pio.register(power, ports(PowerControl.i8042Command, PowerControl.i8042Command), name: "i8042")
        pio.register(CMOSClock(), ports(CMOSClock.indexPort, CMOSClock.dataPort), name: "cmos-rtc")
        pio.register(PanicDevice { finish.value?(.panic) }, ports(PanicDevice.port, PanicDevice.port), name: "pvpanic")
        bootMarker = BootMarker(start: config.startTime, onReached: onBootMarker)
        mmio.register(bootMarker, BootMarker.address...BootMarker.address, name: "boot-marker")

        // Virtio devices on PCI: MSI-X through GSI routes and irqfds, queue
        // notifications through ioeventfds.
        var devices: [(any VirtioDevice, String)] = []
        if config.console == .virtio {
            let output = virtioConsoleOutput ?? { bytes in for b in bytes { consoleOutput(b) } }
            devices.append((VirtioConsole(input: consoleInput, output: output), "virtio-console"))
        }
        if config.entropy { devices.append((VirtioRNG(), "virtio-rng")) }
        let router = GSIRouter(vm: vm)
        var functions: [VirtioPCIDevice] = []
        for (i, (device, name)) in devices.enumerated() {
            let bar = Layout.pciBARStart + UInt64(i) * VirtioPCIDevice.barSize
            let function = try VirtioPCIDevice(device: device, barAddress: bar, memory: memory) { vectors in
                try KVMMSIX(vm: vm, router: router, vectors: vectors)
            }
            mmio.register(function, bar...(bar + VirtioPCIDevice.barSize - 1), name: name)
            for (q, event) in function.notifyEvents.enumerated() {
                let address = bar + UInt64(VirtioPCIDevice.notifyOffset + q * VirtioPCIDevice.notifyMultiplier)
                do { try vm.attachIOEventFD(event, mmio: address, length: 2) } catch {
                    logLine("svmm: \(error): \(name) notifications will exit to svmm")
                }
            }
            functions.append(function)
        }
        virtio = functions
        pio.register(PCIHostBridge(functions: functions), ports(PCIHostBridge.addressPort, PCIHostBridge.dataPort + 3), name: "pci-config")
        self.pio = pio
        self.mmio = mmio

        let supported = try hypervisor.supportedCPUID()
        let cpuid = CPUIDPolicy(supported: supported, cpus: config.cpus)
        var vcpus: [VCPU] = []
        for id in 0..<config.cpus {
            let vcpu = try vm.createVCPU(id: id)
            try vcpu.setCPUID(CPUFeatures.apply(config.cpuFeatures, to: cpuid.entries(forCPU: id), supported: supported))
            try Self.resetFPUAndLAPIC(vcpu)
            if id == 0 { try Self.setEntryState(vcpu, entry: entry) }
            vcpus.append(vcpu)
        }
        self.vcpus = vcpus
        telemetry = vcpus.map { VCPUTelemetry(vcpu: $0.id, timing: config.exitTiming, kvmStats: config.kvmStatistics ? try? $0.stats() : nil) }
        vmStats = config.kvmStatistics ? try? vm.stats() : nil
        finish.value = { [weak self] exit in self?.finish(exit) }
    }

    /// A late-bound callback: devices are made before `self` exists.
    final class Finisher: @unchecked Sendable {
        // SAFETY (@unchecked Sendable): `value` is set once in init, before any
        // vCPU thread starts, and only read afterwards.
        var value: (@Sendable (MachineExit) -> Void)?
    }
    static func finisher() -> Finisher { Finisher() }

    static func resetFPUAndLAPIC(_ vcpu: VCPU) throws {
        var fpu = kvm_fpu()
        fpu.fcw = 0x37F
        fpu.mxcsr = 0x1F80
        try vcpu.setFPU(fpu)
        // LINT0 = ExtINT (the 8259 through the local APIC), LINT1 = NMI, as a
        // PC BIOS leaves them (Intel SDM Vol. 3A §10.5.1).
        try vcpu.modifyLAPIC { regs in
            func set(_ offset: Int, _ value: UInt32) {
                for i in 0..<4 { regs[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * i)) }
            }
            set(0x350, 0x700)
            set(0x360, 0x400)
        }
    }

    /// The boot CPU's registers at the kernel's entry: 64-bit mode for the
    /// Linux boot protocol, 32-bit protected mode for PVH.
    static func setEntryState(_ vcpu: VCPU, entry: LinuxLoader.EntryState) throws {
        var sregs = try vcpu.getSpecialRegisters()
        var regs = kvm_regs()
        switch entry.mode {
        case .linux64:
            LongModeSetup.apply(to: &sregs)
            regs.rsi = entry.bootInfo
        case .pvh32:
            LongModeSetup.applyProtectedMode(to: &sregs)
            regs.rbx = entry.bootInfo
        }
        try vcpu.setSpecialRegisters(sregs)
        regs.rip = entry.rip
        regs.rsp = Layout.bootStack
        regs.rflags = 0x2
        try vcpu.setRegisters(regs)
    }

    /// Records the first way the run ended and wakes `run()`.
    func finish(_ exit: MachineExit) {
        let first = outcome.withLock { o -> Bool in
            if o != nil { return false }
            o = exit
            return true
        }
        ended.store(true, ordering: .releasing)
        if first { finished.signal() }
    }

    /// Runs every vCPU until the guest powers off or resets, a vCPU fails, the
    /// timeout passes or `stop` is called; then stops and joins all threads.
    public func run() throws -> MachineExit {
        let runners = vcpus.map { vcpu in
            VCPUThread(vcpu: vcpu) { [self] vcpu in self.runLoop(vcpu) }
        }
        var deviceThreads: [pthread_t] = []
        for device in virtio {
            deviceThreads.append(try startHostThread("virtio device \(device.device.deviceID)") { device.run() })
        }
        for r in runners { try r.start() }
        let result: DispatchTimeoutResult
        if let t = config.timeoutSeconds {
            result = finished.wait(timeout: .now() + t)
        } else {
            finished.wait()
            result = .success
        }
        if result == .timedOut { finish(.timeout) }
        for r in runners { r.stop() }
        for r in runners { r.join() }
        for device in virtio { device.stop() }
        for t in deviceThreads { pthread_join(t, nil) }
        for device in virtio { device.flush() }
        let states = vcpus.map { VCPUState.read($0) }
        stopped.withLock { $0 = states }
        return outcome.withLock { $0 } ?? .hostError("no outcome")
    }

    /// Exit telemetry, one per vCPU (counters readable at any time).
    public let telemetry: [VCPUTelemetry]
    /// KVM's statistics for the VM, when `config.kvmStatistics` asked for them.
    public let vmStats: KVMStats?

    /// The devices on both buses, for attributing exits to them.
    public var deviceRanges: [DeviceRange] { pio.deviceRanges(bus: "io") + mmio.deviceRanges(bus: "mmio") }

    /// Each vCPU's RIP and interrupt state once `run()` has stopped them (for
    /// timeout reports); nil for a vCPU KVM would not read back.
    public var stoppedAt: [VCPUState?] { stopped.withLock { $0 } }
    private let stopped = Mutex<[VCPUState?]>([])

    /// Ends the run from outside (SIGINT/SIGTERM).
    public func stop(_ exit: MachineExit) { finish(exit) }

    /// The exit loop of one vCPU: one switch over exit reasons, each arm a
    /// call into the bus or a verdict (kvmtool's kvm_cpu__start, in Swift).
    func runLoop(_ vcpu: VCPU) {
        let telemetry = telemetry[vcpu.id]
        while !ended.load(ordering: .acquiring) {
            let exit: VCPUExit
            telemetry.willEnter()
            do { exit = try vcpu.run() } catch {
                finish(.hostError("\(error)"))
                return
            }
            telemetry.didExit(exit)
            switch exit {
            case let .io(port, isWrite, size, count, data):
                for i in 0..<count {
                    let slice = UnsafeMutableRawBufferPointer(rebasing: data[(i * size)..<((i + 1) * size)])
                    pio.access(UInt64(port), isWrite: isWrite, data: slice)
                }
            case let .mmio(address, isWrite, data):
                mmio.access(address, isWrite: isWrite, data: data)
            case .halt, .interrupted:
                break
            case .shutdown:
                finish(.tripleFault(cpu: vcpu.id, rip: try? vcpu.getRegisters().rip))
            case let .systemEvent(type):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_SHUTDOWN: finish(.powerOff)
                case KVM_SYSTEM_EVENT_RESET: finish(.reset)
                default: finish(.internalError(cpu: vcpu.id, detail: "system event \(type)"))
                }
            case let .internalError(suberror, data):
                finish(.internalError(cpu: vcpu.id, detail: describeInternalError(vcpu, suberror: suberror, data: data)))
            case let .failEntry(reason):
                finish(.internalError(cpu: vcpu.id, detail: "VM entry failed, hardware reason 0x\(String(reason, radix: 16))"))
            case let .other(reason):
                finish(.internalError(cpu: vcpu.id, detail: "unhandled exit reason \(reason)"))
            }
        }
    }

    /// "emulation failure at RIP 0x… (bytes: 0f c7 …)": what a person needs to
    /// see which instruction this KVM could not run.
    func describeInternalError(_ vcpu: VCPU, suberror: UInt32, data: [UInt64]) -> String {
        let kind = suberror == 1 ? "emulation failure" : "suberror \(suberror)"
        guard let rip = try? vcpu.getRegisters().rip else { return kind }
        var text = "\(kind) at RIP 0x\(String(rip, radix: 16))"
        if let gpa = vcpu.translate(rip), let bytes = try? memory.read(at: gpa, count: 15) {
            text += " (instruction bytes: \(bytes.map { String($0, radix: 16).leftPadded(2) }.joined(separator: " ")))"
        }
        return text
    }
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}


