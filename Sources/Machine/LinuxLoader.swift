/// Places a bzImage, its command line, initrd, zero page, ACPI tables and
/// page tables in guest memory, and says where the boot CPU starts.
public struct LinuxLoader {
    public struct EntryState: Sendable {
        public var rip: UInt64
        /// %rsi for the Linux 64-bit entry: the zero page.
        public var rsi: UInt64
    }

    public static func load(_ config: BootConfiguration, into memory: GuestMemory) throws -> EntryState {
        let kernel = try BzImage(path: config.kernelPath, bytes: config.kernel)

        // Command line: the kernel's own limit, and svmm's space for it.
        let cmdline = Array(config.commandLine.utf8)
        let limit = min(Int(kernel.commandLineSize), Int(Layout.commandLineMax) - 1)
        guard cmdline.count <= limit else { throw LoaderError.commandLineTooLong(length: cmdline.count, limit: limit) }

        let low = memory.regions[0]
        let kernelEnd = kernel.loadAddress + kernel.footprint
        guard kernelEnd <= low.end else {
            throw LoaderError.memoryTooSmall(needed: kernelEnd, available: memory.totalSize)
        }
        try memory.write(kernel.protectedModeKernel, at: kernel.loadAddress)
        try memory.write(cmdline + [0], at: Layout.commandLine)

        var params = BootParams(kernel: kernel)
        params.setCommandLine(address: Layout.commandLine)
        if let initrd = config.initrd {
            // Highest page-aligned spot below both initrd_addr_max and the end
            // of low RAM, above the kernel.
            let ceiling = min(UInt64(kernel.initrdAddressMax) + 1, low.end)
            let size = UInt64(initrd.count)
            let room = ceiling > kernelEnd ? ceiling - kernelEnd : 0
            guard size <= room else {
                if UInt64(initrd.count) + kernelEnd > memory.totalSize {
                    throw LoaderError.memoryTooSmall(needed: kernelEnd + size, available: memory.totalSize)
                }
                throw LoaderError.initrdTooLarge(path: config.initrdPath ?? "initrd", size: initrd.count, room: room)
            }
            let address = (ceiling - size) & ~(Layout.pageSize - 1)
            try memory.write(initrd, at: address)
            params.setInitrd(address: address, size: size)
        }
        let acpi = ACPITables(cpus: config.cpus).build(at: Layout.acpiStart)
        try memory.write(acpi.bytes, at: Layout.acpiStart)
        params.setACPIRoot(acpi.rsdp)
        params.setMemoryMap(E820Entry.map(for: memory))
        try memory.write(params.bytes, at: Layout.zeroPage)
        try LongModeSetup.writeTables(into: memory)
        return EntryState(rip: kernel.entry64, rsi: Layout.zeroPage)
    }
}
