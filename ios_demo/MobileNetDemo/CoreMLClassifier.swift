import CoreML
import CoreVideo
import DemoLogic
import Foundation
import ImageIO
import Vision

/// One line for the screen: what is wrong and how to fix it.
struct DemoError: LocalizedError {
    let message: String
    init(_ message: String) { self.message = message }
    var errorDescription: String? { message }
}

/// One run on one photo: top 5 (classifiers) or the output shape (feature models), and timings.
struct Outcome {
    let top5: [Classification.Prediction]?
    let outputShape: [Int]
    let preprocessMs: Double
    let inferenceMs: Double
    let path: String
}

/// The bundled .mlpackage (compiled by Xcode to .mlmodelc) behind the manifest's contract.
final class CoreMLClassifier {
    let manifest: DemoManifest
    let artifact: DemoManifest.Artifact
    let labels: [String]?
    private let model: MLModel
    private lazy var visionModel: VNCoreMLModel? = try? VNCoreMLModel(for: model)

    init(bundle: Bundle = .main) throws {
        guard let url = bundle.url(forResource: "manifest", withExtension: "json") else {
            throw DemoError("No model is bundled. Run `mobile-export bundle MODEL.mlpackage --app ios`, then build again.")
        }
        do {
            manifest = try DemoManifest(json: Data(contentsOf: url))
            artifact = try manifest.runnable(format: "mlpackage")
        } catch let error as ManifestError {
            throw DemoError(error.description)
        }
        guard let modelURL = bundle.url(forResource: artifact.compiledName, withExtension: "mlmodelc") else {
            throw DemoError("\(artifact.file) is listed in the manifest but not in the app; bundle it again and add it to the target.")
        }
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndNeuralEngine
        model = try MLModel(contentsOf: modelURL, configuration: config)
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

    var canUseVision: Bool { artifact.inputKind == "image" }

    /// Classifies encoded image bytes (from PhotosPicker). `useVision` lets Vision scale and
    /// center-crop (a square crop of the whole shorter side, not the manifest's crop_pct).
    func classify(_ data: Data, useVision: Bool) throws -> Outcome {
        let (raw, orientation, cgImage) = try Self.decode(data)
        if useVision && canUseVision {
            return try classifyWithVision(cgImage, orientation: orientation)
        }
        let t0 = Date()
        let upright = raw.oriented(orientation)
        let spec = manifest.preprocess
        let input: MLFeatureValue
        if artifact.inputKind == "image" {
            // The model scales pixels itself: hand it the exactly resized crop as 8-bit BGRA.
            input = MLFeatureValue(pixelBuffer: try Self.pixelBuffer(Preprocessor.toTensor(upright, spec: spec, normalize: false), side: spec.crop))
        } else {
            let tensor = Preprocessor.toTensor(upright, spec: spec, normalize: artifact.appNormalizes)
            let array = try MLMultiArray(shape: [1, 3, NSNumber(value: spec.crop), NSNumber(value: spec.crop)], dataType: .float32)
            let pointer = array.dataPointer.bindMemory(to: Float.self, capacity: tensor.count)
            tensor.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: tensor.count) }
            input = MLFeatureValue(multiArray: array)
        }
        let t1 = Date()
        let result = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: [artifact.inputName: input]))
        let t2 = Date()
        let (top5, shape) = rank(result)
        return Outcome(top5: top5, outputShape: shape, preprocessMs: t1.timeIntervalSince(t0) * 1000,
                       inferenceMs: t2.timeIntervalSince(t1) * 1000, path: "exact preprocessing (manifest)")
    }

    private func rank(_ result: MLFeatureProvider) -> ([Classification.Prediction]?, [Int]) {
        guard let value = result.featureValue(for: artifact.outputName) else { return (nil, []) }
        if artifact.outputKind == "classifier", let dict = value.dictionaryValue as? [String: NSNumber] {
            let probs = dict.mapValues { $0.doubleValue }
            return (Classification.topK(probabilities: probs, labels: labels, k: 5), [1, probs.count])
        }
        guard let array = value.multiArrayValue else { return (nil, []) }
        let shape = array.shape.map { $0.intValue }
        if artifact.outputKind == "features" || manifest.output == "features" { return (nil, shape) }
        let values = (0..<array.count).map { Float(truncating: array[$0]) }
        return (Classification.topK(values, outputKind: artifact.outputKind, k: 5, labels: labels), shape)
    }

    private func classifyWithVision(_ image: CGImage, orientation: Int) throws -> Outcome {
        guard let visionModel else { throw DemoError("Vision cannot run this model; switch to exact preprocessing.") }
        let request = VNCoreMLRequest(model: visionModel)
        request.imageCropAndScaleOption = .centerCrop
        let handler = VNImageRequestHandler(cgImage: image, orientation: CGImagePropertyOrientation(rawValue: UInt32(orientation)) ?? .up)
        let t0 = Date()
        try handler.perform([request])
        let ms = Date().timeIntervalSince(t0) * 1000
        if let observations = request.results as? [VNClassificationObservation] {
            let probs = Dictionary(observations.map { ($0.identifier, Double($0.confidence)) }, uniquingKeysWith: { a, _ in a })
            return Outcome(top5: Classification.topK(probabilities: probs, labels: labels, k: 5), outputShape: [1, probs.count],
                           preprocessMs: 0, inferenceMs: ms, path: "Vision (center crop, scale and run)")
        }
        if let features = request.results as? [VNCoreMLFeatureValueObservation], let array = features.first?.featureValue.multiArrayValue {
            let shape = array.shape.map { $0.intValue }
            if manifest.output == "features" { return Outcome(top5: nil, outputShape: shape, preprocessMs: 0, inferenceMs: ms, path: "Vision") }
            let values = (0..<array.count).map { Float(truncating: array[$0]) }
            return Outcome(top5: Classification.topK(values, outputKind: artifact.outputKind, k: 5, labels: labels), outputShape: shape,
                           preprocessMs: 0, inferenceMs: ms, path: "Vision (center crop, scale and run)")
        }
        throw DemoError("Vision returned no results for this model; switch to exact preprocessing.")
    }

    /// Encoded bytes -> raw pixels as stored (before EXIF rotation), the EXIF orientation, the CGImage.
    static func decode(_ data: Data) throws -> (RGBImage, Int, CGImage) {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil),
              let image = CGImageSourceCreateImageAtIndex(source, 0, nil)
        else { throw DemoError("That file is not an image this device can decode; pick another photo.") }
        let props = CGImageSourceCopyPropertiesAtIndex(source, 0, nil) as? [CFString: Any]
        let orientation = (props?[kCGImagePropertyOrientation] as? NSNumber)?.intValue ?? 1
        let w = image.width, h = image.height
        guard w * h <= 50_000_000 else { throw DemoError("The image is too large (\(w)x\(h)); pick a smaller one.") }
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

    /// A crop x crop BGRA pixel buffer from a [0, 1] CHW tensor, rounded to 8 bits.
    static func pixelBuffer(_ chw: [Float], side: Int) throws -> CVPixelBuffer {
        var buffer: CVPixelBuffer?
        let attrs = [kCVPixelBufferCGImageCompatibilityKey: true, kCVPixelBufferCGBitmapContextCompatibilityKey: true] as CFDictionary
        guard CVPixelBufferCreate(kCFAllocatorDefault, side, side, kCVPixelFormatType_32BGRA, attrs, &buffer) == kCVReturnSuccess,
              let pb = buffer
        else { throw DemoError("Could not allocate the model's input image.") }
        CVPixelBufferLockBaseAddress(pb, [])
        defer { CVPixelBufferUnlockBaseAddress(pb, []) }
        let rowBytes = CVPixelBufferGetBytesPerRow(pb)
        let base = CVPixelBufferGetBaseAddress(pb)!.assumingMemoryBound(to: UInt8.self)
        let plane = side * side
        func byte(_ v: Float) -> UInt8 { UInt8(max(0, min(255, (v * 255).rounded()))) }
        for y in 0..<side {
            for x in 0..<side {
                let i = y * side + x
                let p = base + y * rowBytes + x * 4
                p[0] = byte(chw[2 * plane + i])
                p[1] = byte(chw[plane + i])
                p[2] = byte(chw[i])
                p[3] = 255
            }
        }
        return pb
    }
}
