import VMCore
/// Places a bzImage, its command line, initrd, zero page, ACPI tables and
/// page tables in guest memory, and says where the boot CPU starts.
public struct LinuxLoader {
    public struct EntryState: Sendable {
        public enum Mode: Sendable { case linux64, pvh32 }
        public var mode: Mode
        /// For a bzImage entered through PVH: the payload's compression.
        public var decompressed: KernelPayload.Compression?
        public var rip: UInt64
        /// %rsi for the Linux 64-bit entry (the zero page); %rbx for PVH (start info).
        public var bootInfo: UInt64
    }

    /// Loads an ELF vmlinux (PVH) or a bzImage: through PVH after
    /// decompressing its payload on the host (the fast path), or through the
    /// Linux boot protocol, as `config.bootProtocol` asks.
    public static func load(_ config: BootConfiguration, into memory: GuestMemory) throws -> EntryState {
        if ELFKernel.isELF(config.kernel) {
            return try loadPVH(config, ELFKernel(config.kernel), elf: config.kernel, scratch: nil, into: memory)
        }
        let kernel = try BzImage(config.kernel)
        if config.bootProtocol != .linux {
            switch pvhKernel(inside: kernel, of: config.kernel, memory: memory) {
            case let .success((compression, elf, vmlinux, scratch)):
                var entry = try loadPVH(config, vmlinux, elf: elf, scratch: scratch, into: memory)
                entry.decompressed = compression
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

    /// The ELF inside a bzImage's payload, when it has a PVH entry.
    ///
    /// The payload is read and decompressed in a scratch area at the top of
    /// guest RAM, as the kernel's own decompressor would use guest RAM, and
    /// the scratch pages go back to the host once the segments are in place:
    /// svmm holds no copy of the kernel and the guest finds that RAM zeroed.
    /// Where RAM is too small for that, the host heap serves (freed before
    /// the guest runs).
    static func pvhKernel(inside kernel: BzImage, of image: ImageSource, memory: GuestMemory)
        -> Result<(KernelPayload.Compression, ImageSource, ELFKernel, scratch: Range<UInt64>?), NoPVH> {
        guard let range = kernel.payload else { return .failure(NoPVH(text: "its header locates no compressed payload")) }
        let page = Layout.pageSize
        let top = memory.regions[0].end
        let inAddress = top >= UInt64(range.count) ? (top - UInt64(range.count)) & ~(page - 1) : 0
        var staged: (size: Int, kind: KernelPayload.Compression)?
        if inAddress > 0, (try? image.copy(range, into: memory, at: inAddress)) != nil,
           let sized = try? memory.withBytes(at: inAddress, count: range.count, { src in
               Result { () throws(KernelPayload.Failure) in try KernelPayload.uncompressedSize(UnsafeRawBufferPointer(src)) } }).get(),
           inAddress >= UInt64(sized.1) + (16 << 20) {
            staged = (sized.1, sized.0)
        } else if inAddress > 0 {
            try? memory.discard(inAddress..<top)
        }
        if let (size, _) = staged {
            let outAddress = (inAddress - UInt64(size)) & ~(page - 1)
            let scratch = outAddress..<top
            func fail(_ text: String) -> Result<(KernelPayload.Compression, ImageSource, ELFKernel, scratch: Range<UInt64>?), NoPVH> {
                try? memory.discard(scratch)
                return .failure(NoPVH(text: text))
            }
            // Guest RAM to guest RAM: the payload at inAddress decompresses to outAddress below it.
            let decompressed = try? memory.withBytes(at: inAddress, count: range.count) { src in
                try? memory.withBytes(at: outAddress, count: size) { dst in
                    Result { () throws(KernelPayload.Failure) in try KernelPayload.decompress(UnsafeRawBufferPointer(src), into: dst) }
                }
            }
            guard let decompressed = decompressed ?? nil else { return fail("its payload does not fit in RAM") }
            let compression: KernelPayload.Compression
            do { compression = try decompressed.get() } catch { return fail(error.reason) }
            let elf = ImageSource(guest: memory, at: outAddress, count: size, path: kernel.path)
            guard let vmlinux = try? ELFKernel(elf) else { return fail("its payload is not an ELF kernel with a PVH note") }
            if vmlinux.end <= outAddress, vmlinux.segments.allSatisfy({ $0.physicalAddress < outAddress }) {
                return .success((compression, elf, vmlinux, scratch))
            }
            // The kernel wants the scratch area itself: load from a heap copy.
            let copy = ImageSource(elf.read(0..<size), path: kernel.path)
            try? memory.discard(scratch)
            return .success((compression, copy, vmlinux, nil))
        }
        let payload = image.read(range)
        guard payload.count == range.count else { return .failure(NoPVH(text: "its payload cannot be read")) }
        let compression: KernelPayload.Compression, elf: ImageSource
        do {
            let bytes: [UInt8]
            (compression, bytes) = try KernelPayload.decompress(payload[...])
            elf = ImageSource(bytes, path: kernel.path)
        } catch {
            return .failure(NoPVH(text: error.reason))
        }
        do {
            return .success((compression, elf, try ELFKernel(elf), nil))
        } catch {
            return .failure(NoPVH(text: "its payload is not an ELF kernel with a PVH note"))
        }
    }

    static func loadPVH(_ config: BootConfiguration, _ kernel: ELFKernel, elf: ImageSource, scratch: Range<UInt64>?,
                        into memory: GuestMemory) throws -> EntryState {
        // Linux's own limit (COMMAND_LINE_SIZE on x86) is 2048 bytes.
        try writeCommandLine(config, limit: 2047, into: memory)
        guard memory.contains(kernel.end - 1, count: 1), kernel.end <= memory.regions[0].end else {
            throw LoaderError.memoryTooSmall(needed: kernel.end, available: memory.totalSize)
        }
        for s in kernel.segments {
            try elf.copy(s.fileRange, into: memory, at: s.physicalAddress)
            let bss = s.memorySize - UInt64(s.fileRange.count)
            if bss > 0 { try memory.fill(0, at: s.physicalAddress + UInt64(s.fileRange.count), count: Int(bss)) }
        }
        if let scratch { try memory.discard(scratch) }
        let initrd = try placeInitrd(config, above: kernel.end, ceiling: UInt64(UInt32.max) + 1, into: memory)
        let info = PVHStartInfo(commandLine: Layout.commandLine, rsdp: try writeACPI(config, into: memory),
                                initrd: initrd, memoryMap: E820Entry.map(for: memory))
        try memory.write(info.bytes(at: Layout.pvhStartInfo), at: Layout.pvhStartInfo)
        try LongModeSetup.writeTables(into: memory)
        return EntryState(mode: .pvh32, rip: kernel.pvhEntry, bootInfo: Layout.pvhStartInfo)
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

    static func writeACPI(_ config: BootConfiguration, into memory: GuestMemory) throws -> UInt64 {
        let acpi = ACPITables(cpus: config.cpus).build(at: Layout.acpiStart)
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
