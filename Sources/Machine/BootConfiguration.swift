import VMCore
/// How a bzImage is entered.
public enum BootProtocol: String, Sendable, CaseIterable {
    /// PVH when the payload decompresses (on the host) to an ELF with a PVH
    /// note, else the Linux boot protocol.
    case auto
    /// The Linux boot protocol: the kernel decompresses itself in the guest.
    case linux
    /// PVH through host decompression, or an error saying why not.
    case pvh
}

/// Which device is the guest's interactive console (stdin and stdout).
public enum ConsoleDevice: String, Sendable, CaseIterable {
    /// COM1, the guest's ttyS0.
    case serial
    /// A virtio-console on PCI, the guest's hvc0 (COM1 still prints early boot messages).
    case virtio
}

/// What `svmm boot` was asked to boot.
public struct BootConfiguration: Sendable {
    public var kernelPath: String { kernel.path }
    /// The kernel image: an open file, read into guest RAM as it is loaded.
    public var kernel: ImageSource
    public var initrdPath: String? { initrd?.path }
    public var initrd: ImageSource?
    public var commandLine: String
    public var cpus: Int
    public var memoryBytes: UInt64
    public var timeoutSeconds: Double?
    public var bootProtocol: BootProtocol = .auto
    /// CPUID feature changes (`--cpu-features`), applied to every vCPU.
    public var cpuFeatures: [CPUFeatures.Change] = []
    /// When svmm started (`DispatchTime.now().uptimeNanoseconds`), for the boot marker.
    public var startTime: UInt64 = 0
    /// Measure exit-handling latency and guest/svmm time (two clock reads
    /// per exit). Exit counts are kept either way.
    public var exitTiming = false
    /// Open KVM's binary statistics for the VM and every vCPU.
    public var kvmStatistics = false

    /// Which device gets stdin (and is the kernel's console with the default command line).
    public var console: ConsoleDevice = .serial
    /// A virtio-rng device on PCI (entropy from the host's getrandom).
    public var entropy = true
    /// Disks, in order: the guest's vda, vdb, …
    public var disks: [DiskImage] = []
    /// Network interfaces, in order: the guest's eth0, eth1, … (virtio-net).
    public var nets: [NetInterface] = []
    /// The in-kernel i8254 PIT. Off by default: Linux with kvm-clock and the
    /// local APIC timer does not need it, and its teardown costs ~13 ms at exit.
    public var pit = false
    /// The PC keyboard controller and a keyboard (`I8042`), named in the
    /// FADT: the guest can be sent Ctrl-Alt-Del. Off by default: Linux's
    /// probe of the controller costs boot time, and only the API sends keys.
    public var keyboard = false
    /// The test devices of QEMU that kvm-unit-tests uses: isa-debug-exit
    /// (port 0xf4: the guest's write ends the run, `MachineExit.programExited`).
    public var testDevices = false
    /// Record the pages written (KVM's dirty log and the devices'), for Diff snapshots.
    public var trackDirtyPages = false

    public static let defaultCommandLine = "console=ttyS0 panic=-1"
    /// With `--console virtio`: early messages on ttyS0, then hvc0 once virtio_console loads.
    public static let virtioConsoleCommandLine = "console=ttyS0 console=hvc0 panic=-1"

    public init(kernel: ImageSource, initrd: ImageSource? = nil,
                commandLine: String = defaultCommandLine, cpus: Int = 1, memoryBytes: UInt64 = 512 << 20,
                timeoutSeconds: Double? = nil) {
        self.kernel = kernel
        self.initrd = initrd
        self.commandLine = commandLine
        self.cpus = cpus
        self.memoryBytes = memoryBytes
        self.timeoutSeconds = timeoutSeconds
    }

    /// In-memory images (tests).
    public init(kernelPath: String, kernel: [UInt8], initrdPath: String? = nil, initrd: [UInt8]? = nil,
                commandLine: String = defaultCommandLine, cpus: Int = 1, memoryBytes: UInt64 = 512 << 20,
                timeoutSeconds: Double? = nil) {
        self.init(kernel: ImageSource(kernel, path: kernelPath),
                  initrd: initrd.map { ImageSource($0, path: initrdPath ?? "initrd") },
                  commandLine: commandLine, cpus: cpus, memoryBytes: memoryBytes, timeoutSeconds: timeoutSeconds)
    }
}
