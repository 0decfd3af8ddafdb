// swift-tools-version:5.9
// The Spinel Swift package. Build the XCFramework and the generated Swift
// first: ./build-xcframework.sh (macOS with Xcode).
import PackageDescription

let package = Package(
    name: "Spinel",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Spinel", targets: ["Spinel"]),
    ],
    targets: [
        // libspinel_ffi.a per platform + the uniffi C header and module map
        // (module SpinelFFIC), made by build-xcframework.sh.
        .binaryTarget(name: "SpinelFFIC", path: "build/SpinelFFI.xcframework"),
        // Sources/Spinel/Generated/SpinelFFI.swift (uniffi, generated from the
        // exact library in the XCFramework) + the idiomatic wrapper Spinel.swift.
        .target(name: "Spinel", dependencies: ["SpinelFFIC"], path: "Sources/Spinel"),
    ]
)
