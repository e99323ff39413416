import Machine

/// The board's errors carry data and say what is wrong; the command line
/// adds what to do, in terms of its own flags.
extension LoaderError {
    var message: String {
        switch self {
        case .notAKernel: description + ": pass a bzImage or vmlinux with --kernel"
        case .commandLineTooLong: description + ": shorten --cmdline"
        case .initrdTooLarge: description + ": raise --memory or shrink the initrd"
        case .memoryTooSmall: description + ": raise --memory"
        case .noPVHPath: description + "; use --boot-protocol linux or auto"
        default: description
        }
    }
}

extension CPUFeatureError {
    var message: String {
        switch self {
        case .unknown: description + " in --cpu-features: use /proc/cpuinfo names such as cx16, avx2, x2apic (svmm boot --help lists them)"
        case .unsupported(let n): "--cpu-features +\(n): " + description
        }
    }
}
