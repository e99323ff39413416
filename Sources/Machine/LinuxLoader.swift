import VMCore
/// Places a bzImage, its command line, initrd, zero page, ACPI tables and
/// page tables in guest memory, and says where the boot CPU starts.
public struct LinuxLoader {
    public struct EntryState: Sendable {
        public enum Mode: Sendable { case linux64, pvh32, multiboot32 }
        public var mode: Mode
        /// For a bzImage entered through PVH: the payload's compression.
        public var decompressed: KernelPayload.Compression?
        public var rip: UInt64
        /// %rsi for the Linux 64-bit entry (the zero page); %rbx for PVH (start
        /// info) and Multiboot (the Multiboot information).
        public var bootInfo: UInt64
    }

    /// Loads an ELF vmlinux (PVH), a Multiboot kernel, or a bzImage: through
    /// PVH after decompressing its payload on the host (the fast path), or
    /// through the Linux boot protocol, as `config.bootProtocol` asks.
    public static func load(_ config: BootConfiguration, into memory: GuestMemory) throws -> EntryState {
        if MultibootKernel.isMultiboot(config.kernel) {
            return try loadMultiboot(config, try MultibootKernel(config.kernel), into: memory)
        }
        if ELFKernel.isELF(config.kernel) {
            return try loadPVH(config, ELFKernel(config.kernel), from: config.kernel, into: memory)
        }
        let kernel = try BzImage(config.kernel)
        if config.bootProtocol != .linux {
            switch pvhKernel(inside: kernel, of: config.kernel, memory: memory) {
            case let .success(found):
                var entry = try loadPVH(config, found.vmlinux, from: found.source, into: memory)
                entry.decompressed = found.compression
                return entry
            case let .failure(reason):
                if config.bootProtocol == .pvh { throw LoaderError.noPVHPath(path: config.kernelPath, reason: reason.text) }
            }
        }

        // Command line: the kernel's own limit, and svmm's space for it.
        try writeCommandLine(config, limit: Int(kernel.commandLineSize), into: memory)
        let kernelEnd = kernel.loadAddress + kernel.footprint
        guard kernelEnd <= memory.regions[0].end else {
            throw LoaderError.memoryTooSmall(needed: kernelEnd, available: memory.totalSize)
        }
        try config.kernel.copy(kernel.protectedModeKernel, into: memory, at: kernel.loadAddress)

        var params = BootParams(kernel: kernel)
        params.setCommandLine(address: Layout.commandLine)
        if let initrd = try placeInitrd(config, above: kernelEnd, ceiling: UInt64(kernel.initrdAddressMax) + 1, into: memory) {
            params.setInitrd(address: initrd.address, size: initrd.size)
        }
        params.setACPIRoot(try writeACPI(config, into: memory))
        params.setMemoryMap(E820Entry.map(for: memory))
        try memory.write(params.bytes, at: Layout.zeroPage)
        try LongModeSetup.writeTables(into: memory)
        return EntryState(mode: .linux64, rip: kernel.entry64, bootInfo: Layout.zeroPage)
    }

    struct NoPVH: Error { let text: String }

    /// A bzImage's decompressed vmlinux, and where its segments come from.
    struct PVHKernel {
        let compression: KernelPayload.Compression
        let vmlinux: ELFKernel
        /// The image to copy the segments from; nil when they are in place.
        let source: ImageSource?
    }

    /// Linux links vmlinux for 2 MiB pages (x86-64's max-page-size): its
    /// first PT_LOAD starts 2 MiB into the file and loads at the bzImage's
    /// preferred address.
    static let firstSegmentOffset: UInt64 = 0x20_0000

    /// The ELF inside a bzImage's payload, when it has a PVH entry.
    ///
    /// The payload is staged at the top of guest RAM and decompressed from
    /// there straight into guest RAM where the kernel's first segment
    /// belongs, so most of the kernel is in place as it comes out of the
    /// decompressor; the other segments move within guest RAM, and the
    /// staged payload and the pages of the image no segment occupies (ELF
    /// headers, symbols) go back to the host. Each page of fresh RAM costs
    /// the host a zeroing (the bulk of svmm's setup, tenfold under the
    /// sandbox's emulation), so this touches little more than the kernel's
    /// size, where decompressing the image elsewhere and copying its
    /// segments touched 2.5 times that. svmm holds no copy of the kernel in
    /// its own memory (a mapping of the file would put the payload's pages
    /// in svmm's resident set). Where RAM is too small, or the segments would
    /// overwrite each other's bytes before they move, the image is
    /// decompressed (or copied) to the host heap and loaded from there,
    /// freed before the guest runs.
    static func pvhKernel(inside kernel: BzImage, of image: ImageSource, memory: GuestMemory) -> Result<PVHKernel, NoPVH> {
        guard let range = kernel.payload else { return .failure(NoPVH(text: "its header locates no compressed payload")) }
        let decompress = { (payload: UnsafeRawBufferPointer, ceiling: UInt64) in
            pvhKernel(payload: payload, path: kernel.path, preferredAddress: kernel.preferredAddress, below: ceiling, memory: memory)
        }
        let top = memory.regions[0].end
        let stage = UInt64(range.count) < top ? (top - UInt64(range.count)) & ~(Layout.pageSize - 1) : 0
        if stage > 0, (try? image.copy(range, into: memory, at: stage)) != nil {
            defer { try? memory.discard(stage..<top) }
            if let found = try? memory.withBytes(at: stage, count: range.count, { decompress(UnsafeRawBufferPointer($0), stage) }) {
                return found
            }
        }
        let payload = image.read(range)
        guard payload.count == range.count else { return .failure(NoPVH(text: "its payload cannot be read")) }
        return payload.withUnsafeBytes { decompress($0, top) }
    }

    /// Decompresses `payload` in place below `ceiling` (or to the heap).
    static func pvhKernel(payload: UnsafeRawBufferPointer, path: String, preferredAddress: UInt64, below ceiling: UInt64,
                          memory: GuestMemory) -> Result<PVHKernel, NoPVH> {
        let kind: KernelPayload.Compression, size: Int
        do { (kind, size) = try KernelPayload.uncompressedSize(payload) } catch { return .failure(NoPVH(text: error.reason)) }
        let notAKernel = NoPVH(text: "its payload is not an ELF kernel with a PVH note")
        let base = preferredAddress &- firstSegmentOffset
        let end = base.addingReportingOverflow(UInt64(size))
        guard preferredAddress >= Layout.kernelLoad + firstSegmentOffset, base % Layout.pageSize == 0,
              !end.overflow, end.partialValue <= ceiling else {
            // Too little RAM to decompress in place.
            let elf: ImageSource
            do { elf = ImageSource(try KernelPayload.decompress(payload).1, path: path) } catch { return .failure(NoPVH(text: error.reason)) }
            guard let vmlinux = try? ELFKernel(elf) else { return .failure(notAKernel) }
            return .success(PVHKernel(compression: kind, vmlinux: vmlinux, source: elf))
        }
        let area = base..<(end.partialValue + Layout.pageSize - 1) & ~(Layout.pageSize - 1)
        let decompressed = try? memory.withBytes(at: base, count: size) { dst in
            Result { () throws(KernelPayload.Failure) in try KernelPayload.decompress(payload, into: dst) }
        }
        func fail(_ reason: NoPVH) -> Result<PVHKernel, NoPVH> {
            try? memory.discard(area)
            return .failure(reason)
        }
        do { _ = try decompressed?.get() } catch { return fail(NoPVH(text: error.reason)) }
        let elf = ImageSource(guest: memory, at: base, count: size, path: path)
        guard let vmlinux = try? ELFKernel(elf) else { return fail(notAKernel) }
        if (try? place(vmlinux, decompressedIn: area, below: ceiling, memory: memory)) == true {
            return .success(PVHKernel(compression: kind, vmlinux: vmlinux, source: nil))
        }
        let copy = ImageSource(elf.read(0..<size), path: path)
        try? memory.discard(area)
        return .success(PVHKernel(compression: kind, vmlinux: vmlinux, source: copy))
    }

    /// Puts the segments of a kernel decompressed into `area` of guest RAM at
    /// their addresses: moves those not already there, zeroes their bss and
    /// gives back the pages of `area` that no segment occupies. Returns
    /// false, having changed nothing, where segments overlap each other or
    /// reach `ceiling`, or where no order of moves keeps every segment's
    /// bytes until they are moved.
    static func place(_ kernel: ELFKernel, decompressedIn area: Range<UInt64>, below ceiling: UInt64,
                      memory: GuestMemory) throws -> Bool {
        let targets = kernel.segments.map { $0.physicalAddress..<$0.physicalAddress + $0.memorySize }
            .sorted { $0.lowerBound < $1.lowerBound }
        guard kernel.end <= ceiling, zip(targets, targets.dropFirst()).allSatisfy({ $0.upperBound <= $1.lowerBound })
        else { return false }
        struct Move {
            let from, to, count: UInt64
            var source: Range<UInt64> { from..<from + count }
            var destination: Range<UInt64> { to..<to + count }
        }
        var pending = kernel.segments.map {
            Move(from: area.lowerBound + UInt64($0.fileRange.lowerBound), to: $0.physicalAddress, count: UInt64($0.fileRange.count))
        }.filter { $0.from != $0.to && $0.count > 0 }
        var order: [Move] = []
        while let i = pending.indices.first(where: { i in
            pending.indices.allSatisfy { j in j == i || !pending[i].destination.overlaps(pending[j].source) }
        }) {
            order.append(pending.remove(at: i))
        }
        guard pending.isEmpty else { return false }
        for m in order { try memory.copy(from: m.from, to: m.to, count: Int(m.count)) }
        for s in kernel.segments where s.memorySize > UInt64(s.fileRange.count) {
            try memory.fill(0, at: s.physicalAddress + UInt64(s.fileRange.count), count: Int(s.memorySize) - s.fileRange.count)
        }
        let page = Layout.pageSize
        var from = area.lowerBound
        for t in targets + [area.upperBound..<area.upperBound] {
            let gapEnd = min(t.lowerBound & ~(page - 1), area.upperBound)
            if gapEnd > from { try memory.discard(from..<gapEnd) }
            from = max(from, (t.upperBound + page - 1) & ~(page - 1))
        }
        return true
    }

    /// Enters `kernel` through PVH; its segments are copied from `source`,
    /// or are already in place where that is nil.
    static func loadPVH(_ config: BootConfiguration, _ kernel: ELFKernel, from source: ImageSource?,
                        into memory: GuestMemory) throws -> EntryState {
        // Linux's own limit (COMMAND_LINE_SIZE on x86) is 2048 bytes.
        try writeCommandLine(config, limit: 2047, into: memory)
        guard memory.contains(kernel.end - 1, count: 1), kernel.end <= memory.regions[0].end else {
            throw LoaderError.memoryTooSmall(needed: kernel.end, available: memory.totalSize)
        }
        if let source { try loadSegments(kernel.segments, from: source, into: memory) }
        let initrd = try placeInitrd(config, above: kernel.end, ceiling: UInt64(UInt32.max) + 1, into: memory)
        let info = PVHStartInfo(commandLine: Layout.commandLine, rsdp: try writeACPI(config, into: memory),
                                initrd: initrd, memoryMap: E820Entry.map(for: memory))
        try memory.write(info.bytes(at: Layout.pvhStartInfo), at: Layout.pvhStartInfo)
        try LongModeSetup.writeTables(into: memory)
        return EntryState(mode: .pvh32, rip: kernel.pvhEntry, bootInfo: Layout.pvhStartInfo)
    }

    /// Enters a Multiboot kernel as QEMU's `-kernel` does: in 32-bit
    /// protected mode, paging off, EAX the loader's magic, EBX the
    /// information; the command line is the kernel's path and then
    /// `config.commandLine` (argv[0] is the program's name), the initrd its
    /// one module (page-aligned, named by its path). The ACPI tables sit where
    /// a scan of the BIOS area finds their RSDP.
    static func loadMultiboot(_ config: BootConfiguration, _ kernel: MultibootKernel, into memory: GuestMemory) throws -> EntryState {
        let low = memory.regions[0].end
        guard kernel.start >= Layout.kernelLoad, kernel.end <= low else {
            throw LoaderError.multibootOverlap(path: kernel.path, start: kernel.start, end: kernel.end)
        }
        try loadSegments(kernel.segments, from: config.kernel, into: memory)
        let line = Array((config.commandLine.isEmpty ? config.kernelPath : config.kernelPath + " " + config.commandLine).utf8)
        let moduleName = Array((config.initrdPath ?? "").utf8), loader = Array("svmm".utf8)
        let strings = line + [0] + moduleName + [0] + loader + [0]
        guard strings.count <= Int(Layout.commandLineMax) else {
            throw LoaderError.commandLineTooLong(length: line.count, limit: Int(Layout.commandLineMax) - moduleName.count - loader.count - 3)
        }
        try memory.write(strings, at: Layout.commandLine)
        let moduleString = Layout.commandLine + UInt64(line.count + 1)
        let initrd = try placeInitrd(config, above: kernel.end, ceiling: low, into: memory)
        let info = MultibootInfo(commandLine: Layout.commandLine, loaderName: moduleString + UInt64(moduleName.count + 1),
                                 module: initrd.map { .init(start: $0.address, end: $0.address + $0.size, string: moduleString) },
                                 memoryMap: E820Entry.map(for: memory))
        try memory.write(info.bytes(at: Layout.multibootInfo), at: Layout.multibootInfo)
        _ = try writeACPI(config, pmTimer: true, into: memory)
        try LongModeSetup.writeTables(into: memory)
        return EntryState(mode: .multiboot32, rip: UInt64(kernel.entry), bootInfo: Layout.multibootInfo)
    }

    /// Copies each segment's file bytes to its physical address and zeroes
    /// the rest of its memory size (bss).
    static func loadSegments(_ segments: [ELFKernel.Segment], from source: ImageSource, into memory: GuestMemory) throws {
        for s in segments {
            try source.copy(s.fileRange, into: memory, at: s.physicalAddress)
            let bss = s.memorySize - UInt64(s.fileRange.count)
            if bss > 0 { try memory.fill(0, at: s.physicalAddress + UInt64(s.fileRange.count), count: Int(bss)) }
        }
    }

    static func writeCommandLine(_ config: BootConfiguration, limit: Int, into memory: GuestMemory) throws {
        let cmdline = Array(config.commandLine.utf8)
        let limit = min(limit, Int(Layout.commandLineMax) - 1)
        guard cmdline.count <= limit else { throw LoaderError.commandLineTooLong(length: cmdline.count, limit: limit) }
        try memory.write(cmdline + [0], at: Layout.commandLine)
    }

    /// Puts the initrd at the highest page-aligned spot below both `ceiling`
    /// (the kernel's initrd_addr_max) and the end of low RAM, above the kernel.
    static func placeInitrd(_ config: BootConfiguration, above kernelEnd: UInt64, ceiling: UInt64,
                            into memory: GuestMemory) throws -> (address: UInt64, size: UInt64)? {
        guard let initrd = config.initrd else { return nil }
        let top = min(ceiling, memory.regions[0].end)
        let size = UInt64(initrd.count)
        let path = initrd.path
        let room = top > kernelEnd ? top - kernelEnd : 0
        guard size + Layout.pageSize <= room else {
            if kernelEnd + size > memory.totalSize {
                throw LoaderError.memoryTooSmall(needed: kernelEnd + size, available: memory.totalSize)
            }
            throw LoaderError.initrdTooLarge(path: path, size: initrd.count, room: room)
        }
        let address = (top - size) & ~(Layout.pageSize - 1)
        try initrd.copy(0..<initrd.count, into: memory, at: address)
        return (address, size)
    }

    static func writeACPI(_ config: BootConfiguration, pmTimer: Bool = false, into memory: GuestMemory) throws -> UInt64 {
        let acpi = ACPITables(cpus: config.cpus, pmTimer: pmTimer, keyboard: config.keyboard).build(at: Layout.acpiStart)
        try memory.write(acpi.bytes, at: Layout.acpiStart)
        try memory.write(resetVectorStub, at: Layout.resetVector)
        return acpi.rsdp
    }

    /// What a CPU finds at the reset vector (F000:FFF0) in place of a BIOS:
    /// `mov al, 1; mov dx, 0x602; out dx, al; hlt; jmp $-1` — a write to the
    /// ACPI reset register. Linux on a hardware-reduced ACPI platform without
    /// EFI reboots by jumping here (reboot=efi falls back to reboot=bios), so
    /// this turns that path into a clean reset.
    static let resetVectorStub: [UInt8] = [0xB0, ACPITables.resetValue, 0xBA]
        + le(UInt64(ACPITables.resetPort), 2) + [0xEE, 0xF4, 0xEB, 0xFD]
}
