import DemoLogic
import Foundation
import ImageIO

/// One line for the screen: what is wrong and how to fix it.
struct DemoError: LocalizedError, Sendable {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}

/// One run on one photo: top 5 (classifiers) or the output shape (feature models), timings, and
/// which runtime and backend produced it, so runs of the same photo can be compared on screen.
struct Outcome: Sendable {
    let top5: [Classification.Prediction]?
    let outputShape: [Int]
    let preprocessMs: Double
    let inferenceMs: Double
    let path: String
    let runtime: String
    let backend: String
}

/// A bundled model file behind the manifest's contract. Implementations serialize their own
/// calls (a lock around the native model), so one instance can be shared across tasks.
protocol ModelRunner: AnyObject, Sendable {
    var model: BundledModel { get }
    var artifact: DemoManifest.Artifact { get }
    var canUseVision: Bool { get }
    func classify(_ data: Data, useVision: Bool) throws -> Outcome
}

extension ModelRunner {
    var runtime: (name: String, backend: String) { artifact.runtime }
}

/// What `mobile-export bundle --app ios` put into the app: manifest, labels, and the files it lists.
struct BundledModel: Sendable {
    let manifest: DemoManifest
    let labels: [String]?
    /// Formats this app runs: Core ML packages (compiled by Xcode) and ExecuTorch programs.
    static let formats = ["mlpackage", "pte"]

    init(bundle: Bundle = .main) throws {
        guard let url = bundle.url(forResource: "manifest", withExtension: "json") else {
            throw DemoError("No model is bundled. Run `mobile-export bundle MODEL.mlpackage|MODEL.pte --app ios`, then build again.")
        }
        do {
            manifest = try DemoManifest(json: Data(contentsOf: url))
        } catch let error as ManifestError {
            throw DemoError(error.description)
        }
        if let ref = manifest.labels {
            guard let labelsURL = bundle.url(forResource: ref.file, withExtension: nil),
                  let text = try? String(contentsOf: labelsURL, encoding: .utf8)
            else { throw DemoError("The manifest lists \(ref.file) but it is not in the app; bundle the model again.") }
            let parsed = Classification.parseLabels(text)
            guard parsed.count == ref.count, parsed.count == manifest.numClasses else {
                throw DemoError("\(ref.file) has \(parsed.count) labels but the model has \(manifest.numClasses) classes; export again with matching labels.")
            }
            labels = parsed
        } else {
            labels = nil
        }
    }

    /// Every bundled file this app can run, in manifest order.
    func artifacts() throws -> [DemoManifest.Artifact] {
        do {
            return try manifest.runnableArtifacts(formats: Self.formats)
        } catch let error as ManifestError {
            throw DemoError(error.description)
        }
    }

    /// Ranks a flat output the way the manifest says (logits, probabilities, features).
    func rank(_ values: [Float], artifact: DemoManifest.Artifact) -> [Classification.Prediction]? {
        if artifact.outputKind == "features" || manifest.output == "features" { return nil }
        return Classification.topK(values, outputKind: artifact.outputKind, k: 5, labels: labels)
    }
}

/// Encoded photo bytes -> raw pixels as stored (before the EXIF rotation), the EXIF orientation
/// and the CGImage; the same decode for every runtime, so their inputs are identical.
enum PhotoDecoder {
    static let maxPixels = 50_000_000

    static func decode(_ data: Data) throws -> (RGBImage, Int, CGImage) {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil)
        else { throw DemoError("That file is not an image this device can decode; pick another photo.") }
        let props = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any]
        let orientation = (props?[kCGImagePropertyOrientation] as? NSNumber)?.intValue ?? 1
        let w = image.width, h = image.height
        guard w * h <= maxPixels else { throw DemoError("The image is too large (\(w)x\(h)); pick a smaller one.") }
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { buffer in
            guard let ctx = CGContext(data: buffer.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: w * 4,
                                      space: CGColorSpace(name: CGColorSpace.sRGB)!,
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue)
            else { return false }
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn else { throw DemoError("The image could not be drawn; pick another photo.") }
        // CoreGraphics only draws premultiplied alpha: undo it (exact for opaque photos).
        for i in stride(from: 0, to: rgba.count, by: 4) {
            let a = Int(rgba[i + 3])
            if a > 0 && a < 255 {
                for c in 0..<3 { rgba[i + c] = UInt8(min(255, (Int(rgba[i + c]) * 255 + a / 2) / a)) }
            }
        }
        return (RGBImage.fromRGBA(width: w, height: h, bytes: rgba), orientation, image)
    }
}
