// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "svmm",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "svmm", targets: ["svmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // The only C in svmm: typed wrappers over the <linux/kvm.h> ioctls.
        .target(name: "CKVM"),
        // The system zlib, liblzma, liblz4, libzstd and libbz2 (bzImage payloads).
        .systemLibrary(
            name: "CCompression",
            providers: [.apt(["zlib1g-dev", "liblzma-dev", "liblz4-dev", "libzstd-dev", "libbz2-dev"])]
        ),
        // Swift API over /dev/kvm.
        .target(name: "KVM", dependencies: ["CKVM"]),
        // The x86 board: guest memory, boot state, devices, firmware runner, exit telemetry.
        .target(
            name: "Machine",
            dependencies: ["KVM", "CKVM", "CCompression", .product(name: "Histogram", package: "hdrhistogram-swift")]
        ),
        .executableTarget(
            name: "svmm",
            dependencies: [
                "Machine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // libFuzzer target over the virtio data path (Scripts/fuzz builds it
        // with -sanitize=fuzzer; a plain build replays inputs).
        .executableTarget(name: "svmm-fuzz", dependencies: ["Machine"]),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "KVM"]),
        // Drives the scripts and the built svmm as a user would (probe,
        // sandbox, guest artifacts); needs `swift build` first.
        .testTarget(name: "PlatformTests"),
    ],
    swiftLanguageModes: [.v6]
)
