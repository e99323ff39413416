// swift-tools-version: 6.0
import PackageDescription

// The targets are the layers of docs/ARCHITECTURE.md; each knows only the
// ones below it: CKVM → KVM; CHost, CAIO → VMCore → Virtio; Stats;
// Machine (the board) → svmm (the command line, and the API it serves).
// API (Firecracker's HTTP API: parser, bodies, rules) knows only VMCore.
let package = Package(
    name: "svmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "svmm", targets: ["svmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // Typed wrappers over the <linux/kvm.h> ioctls: the only C that touches KVM.
        .target(name: "CKVM"),
        // The host calls Swift's Glibc lacks (eventfd, getrandom, rdtsc, atomic counters in raw memory).
        .target(name: "CHost"),
        // The system zlib, liblzma, liblz4, libzstd and libbz2 (bzImage payloads).
        .systemLibrary(
            name: "CCompression",
            providers: [.apt(["zlib1g-dev", "liblzma-dev", "liblz4-dev", "libzstd-dev", "libbz2-dev"])]
        ),
        // The system libaio (virtio-blk's asynchronous disk I/O).
        .systemLibrary(name: "CAIO", providers: [.apt(["libaio-dev"])]),
        // Swift API over /dev/kvm: VM, vCPU, exits, registers, routing, statistics.
        .target(name: "KVM", dependencies: ["CKVM", .product(name: "SystemPackage", package: "swift-system")]),
        // What every device stands on, KVM-free: guest memory, the buses (port,
        // MMIO, PCI configuration), event fds, host I/O, the console output sink.
        .target(name: "VMCore", dependencies: ["CHost", "CAIO", .product(name: "SystemPackage", package: "swift-system")]),
        // virtio 1.2: virtqueues, the PCI transport, devices, their fuzz targets.
        // Interrupts leave through MSIXDelivery, which the board implements.
        .target(name: "Virtio", dependencies: ["VMCore", .product(name: "SystemPackage", package: "swift-system")]),
        // Recorded exit statistics: the file formats, reading them back, summaries, plots.
        .target(name: "Stats"),
        // The x86 board: builder, running machine and exit dispatch, loaders,
        // ACPI, legacy devices, live telemetry.
        .target(
            name: "Machine",
            dependencies: ["KVM", "VMCore", "Virtio", "Stats", "CCompression",
                           .product(name: "SystemPackage", package: "swift-system"),
                           .product(name: "Histogram", package: "hdrhistogram-swift")]
        ),
        // Firecracker's API on a Unix socket: HTTP/1.1, the JSON bodies
        // (Codable), which call is allowed when. The machine is behind APIBackend.
        .target(name: "API", dependencies: ["VMCore"]),
        .executableTarget(
            name: "svmm",
            dependencies: [
                "Machine", "VMCore", "Stats", "API",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // libFuzzer target over the virtio data path (Scripts/fuzz builds it
        // with -sanitize=fuzzer; a plain build replays inputs).
        .executableTarget(name: "svmm-fuzz", dependencies: ["Virtio", "VMCore", "Machine", "API"]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "KVM", "VMCore", "Virtio", "Stats", "CHost"]),
        .testTarget(name: "APITests", dependencies: ["API"]),
        // Drives the scripts and the built svmm as a user would (probe,
        // sandbox, guest artifacts); needs `swift build` first.
        .testTarget(name: "PlatformTests"),
    ],
    swiftLanguageModes: [.v6]
)
