// swift-tools-version:5.9
// The Spinel Swift package.
// - Apple platforms: the static libspinel_ffi.a of each platform in an
//   XCFramework (module SpinelFFIC), made by ./build-xcframework.sh (Xcode).
// - Linux (CI, and anyone building the wrapper without Xcode): the uniffi C
//   header over a system library, linking libspinel_ffi.so; ios/test-linux.sh
//   generates the bindings from the library it builds and runs `swift test`.
// In both, Sources/Spinel/Generated/SpinelFFI.swift is generated from the
// exact library linked (never committed).
import PackageDescription

#if os(Linux)
let ffi: Target = .systemLibrary(name: "SpinelFFIC", path: "Sources/SpinelFFIC")
#else
let ffi: Target = .binaryTarget(name: "SpinelFFIC", path: "build/SpinelFFI.xcframework")
#endif

let package = Package(
    name: "Spinel",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Spinel", targets: ["Spinel"]),
    ],
    targets: [
        ffi,
        .target(name: "Spinel", dependencies: ["SpinelFFIC"], path: "Sources/Spinel"),
        .testTarget(name: "SpinelTests", dependencies: ["Spinel"], path: "Tests/SpinelTests"),
    ]
)
