import VMCore
import KVM

/// CPU feature flags by their Linux /proc/cpuinfo names, and where CPUID
/// reports each (Intel SDM Vol. 2A, CPUID; AMD APM Vol. 3, Appendix E).
public enum CPUFeatures {
    public enum Register: Sendable { case eax, ebx, ecx, edx }
    public struct Location: Sendable, Equatable {
        public let function: UInt32, index: UInt32, register: Register, bit: UInt32
    }

    static let table: [String: Location] = {
        var t: [String: Location] = [:]
        func add(_ f: UInt32, _ i: UInt32, _ r: Register, _ bits: [(String, UInt32)]) {
            for (name, bit) in bits { t[name] = Location(function: f, index: i, register: r, bit: bit) }
        }
        add(1, 0, .ecx, [("pni", 0), ("sse3", 0), ("pclmulqdq", 1), ("monitor", 3), ("ssse3", 9), ("fma", 12),
                         ("cx16", 13), ("pcid", 17), ("sse4_1", 19), ("sse4_2", 20), ("x2apic", 21), ("movbe", 22),
                         ("popcnt", 23), ("tsc_deadline_timer", 24), ("aes", 25), ("xsave", 26), ("avx", 28),
                         ("f16c", 29), ("rdrand", 30), ("hypervisor", 31)])
        add(1, 0, .edx, [("fpu", 0), ("vme", 1), ("de", 2), ("pse", 3), ("tsc", 4), ("msr", 5), ("pae", 6),
                         ("mce", 7), ("cx8", 8), ("apic", 9), ("sep", 11), ("mtrr", 12), ("pge", 13), ("mca", 14),
                         ("cmov", 15), ("pat", 16), ("pse36", 17), ("clflush", 19), ("mmx", 23), ("fxsr", 24),
                         ("sse", 25), ("sse2", 26), ("ss", 27), ("ht", 28)])
        add(7, 0, .ebx, [("fsgsbase", 0), ("bmi1", 3), ("hle", 4), ("avx2", 5), ("smep", 7), ("bmi2", 8),
                         ("erms", 9), ("invpcid", 10), ("rtm", 11), ("avx512f", 16), ("avx512dq", 17), ("rdseed", 18),
                         ("adx", 19), ("smap", 20), ("avx512ifma", 21), ("clflushopt", 23), ("clwb", 24),
                         ("avx512cd", 28), ("sha_ni", 29), ("avx512bw", 30), ("avx512vl", 31)])
        add(7, 0, .ecx, [("avx512vbmi", 1), ("umip", 2), ("pku", 3), ("waitpkg", 5), ("avx512_vbmi2", 6),
                         ("gfni", 8), ("vaes", 9), ("vpclmulqdq", 10), ("avx512_vnni", 11), ("avx512_bitalg", 12),
                         ("avx512_vpopcntdq", 14), ("la57", 16), ("rdpid", 22)])
        add(7, 0, .edx, [("fsrm", 4), ("md_clear", 10), ("serialize", 14), ("arch_capabilities", 29)])
        add(0xD, 1, .eax, [("xsaveopt", 0), ("xsavec", 1), ("xgetbv1", 2), ("xsaves", 3)])
        add(0x8000_0001, 0, .ecx, [("lahf_lm", 0), ("svm", 2), ("abm", 5), ("sse4a", 6), ("misalignsse", 7),
                                   ("3dnowprefetch", 8), ("xop", 11), ("fma4", 16), ("tbm", 21), ("topoext", 22)])
        add(0x8000_0001, 0, .edx, [("syscall", 11), ("nx", 20), ("mmxext", 22), ("fxsr_opt", 25),
                                   ("pdpe1gb", 26), ("rdtscp", 27), ("lm", 29)])
        return t
    }()

    public static let names: [String] = table.keys.sorted()

    public struct Change: Sendable, Equatable {
        public var name: String
        public var enable: Bool
    }

    /// Parses "-cx16,+x2apic,avx2" (a bare name adds). Throws a one-line error.
    public static func parse(_ list: String) throws(CPUFeatureError) -> [Change] {
        try list.split(separator: ",").map { raw throws(CPUFeatureError) -> Change in
            var s = raw.trimmingWhitespace()
            var enable = true
            if s.hasPrefix("-") { enable = false; s.removeFirst() } else if s.hasPrefix("+") { s.removeFirst() }
            let name = s.lowercased()
            guard table[name] != nil else { throw .unknown(name) }
            return Change(name: name, enable: enable)
        }
    }

    /// Applies changes to CPUID entries. Enabling a feature this KVM does not
    /// support is refused: the guest would use an instruction that faults.
    public static func apply(_ changes: [Change], to entries: [CPUIDEntry], supported: [CPUIDEntry]) throws(CPUFeatureError) -> [CPUIDEntry] {
        var entries = entries
        for c in changes {
            let loc = table[c.name]!
            let mask = UInt32(1) << loc.bit
            guard let i = entries.firstIndex(where: { $0.function == loc.function && $0.index == loc.index }) else {
                if c.enable { throw .unsupported(c.name) }
                continue
            }
            if c.enable {
                let s = supported.first { $0.function == loc.function && $0.index == loc.index }
                let hostHas = s.map { get($0, loc.register) & mask != 0 } ?? false
                guard hostHas || loc == table["hypervisor"] else { throw .unsupported(c.name) }
                set(&entries[i], loc.register, get(entries[i], loc.register) | mask)
            } else {
                set(&entries[i], loc.register, get(entries[i], loc.register) & ~mask)
            }
        }
        return entries
    }

    static func get(_ e: CPUIDEntry, _ r: Register) -> UInt32 {
        switch r { case .eax: e.eax; case .ebx: e.ebx; case .ecx: e.ecx; case .edx: e.edx }
    }

    static func set(_ e: inout CPUIDEntry, _ r: Register, _ v: UInt32) {
        switch r { case .eax: e.eax = v; case .ebx: e.ebx = v; case .ecx: e.ecx = v; case .edx: e.edx = v }
    }
}

public enum CPUFeatureError: Error, CustomStringConvertible, Equatable, Sendable {
    case unknown(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .unknown(let n):
            return "unknown CPU feature '\(n)'"
        case .unsupported(let n):
            return "this host's KVM does not support \(n), so the guest cannot be given it"
        }
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
