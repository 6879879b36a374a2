// swift-tools-version:5.9
// The platform-free logic of the iOS demo (manifest, preprocessing, top-k) as a package, so
// `swift test` checks it against the golden vectors the Python side makes. The app target in
// project.yml depends on it.
import PackageDescription

let package = Package(
    name: "DemoLogic",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "DemoLogic", targets: ["DemoLogic"])],
    targets: [
        .target(name: "DemoLogic", path: "Sources/DemoLogic"),
        .testTarget(
            name: "DemoLogicTests",
            dependencies: ["DemoLogic"],
            path: "Tests/DemoLogicTests",
            resources: [.copy("Golden")]
        ),
    ]
)
