import CoreML
import CoreVideo
import DemoLogic
import Foundation
import ImageIO
import Vision

/// A bundled .mlpackage (compiled by Xcode to .mlmodelc) run by Core ML directly.
final class CoreMLClassifier: ModelRunner, @unchecked Sendable {
    let model: BundledModel
    let artifact: DemoManifest.Artifact
    private let mlModel: MLModel
    private let visionModel: VNCoreMLModel?
    /// Predictions on one MLModel are serialized: the instance is shared by the screen's tasks.
    private let lock = NSLock()

    init(model: BundledModel, artifact: DemoManifest.Artifact, bundle: Bundle = .main) throws {
        self.model = model
        self.artifact = artifact
        guard let modelURL = bundle.url(forResource: artifact.compiledName, withExtension: "mlmodelc") else {
            throw DemoError("\(artifact.file) is listed in the manifest but not in the app; bundle it again and add it to the target.")
        }
        let config = MLModelConfiguration()
        config.computeUnits = .cpuAndNeuralEngine
        mlModel = try MLModel(contentsOf: modelURL, configuration: config)
        visionModel = artifact.inputKind == "image" ? try? VNCoreMLModel(for: mlModel) : nil
    }

    private var labels: [String]? { model.labels }
    private var manifest: DemoManifest { model.manifest }

    var canUseVision: Bool { artifact.inputKind == "image" }

    /// Classifies encoded image bytes (from PhotosPicker). `useVision` lets Vision scale and
    /// center-crop (a square crop of the whole shorter side, not the manifest's crop_pct).
    func classify(_ data: Data, useVision: Bool) throws -> Outcome {
        let (raw, orientation, cgImage) = try PhotoDecoder.decode(data)
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
            // A new float32 array is contiguous (strides [3*c*c, c*c, c, 1]): copy the CHW tensor as is.
            array.withUnsafeMutableBufferPointer(ofType: Float.self) { destination, strides in
                precondition(strides.last == 1 && destination.count >= tensor.count, "unexpected MLMultiArray layout")
                _ = destination.update(fromContentsOf: tensor)
            }
            input = MLFeatureValue(multiArray: array)
        }
        let t1 = Date()
        let provider = try MLDictionaryFeatureProvider(dictionary: [artifact.inputName: input])
        let result = try lock.withLock { try mlModel.prediction(from: provider) }
        let t2 = Date()
        let (top5, shape) = rank(result)
        return outcome(top5, shape, preprocessMs: t1.timeIntervalSince(t0) * 1000, inferenceMs: t2.timeIntervalSince(t1) * 1000,
                       path: "exact preprocessing (manifest)")
    }

    private func outcome(_ top5: [Classification.Prediction]?, _ shape: [Int], preprocessMs: Double, inferenceMs: Double,
                         path: String) -> Outcome {
        let (name, backend) = artifact.runtime
        return Outcome(top5: top5, outputShape: shape, preprocessMs: preprocessMs, inferenceMs: inferenceMs, path: path,
                       runtime: name, backend: backend)
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
        try lock.withLock { try handler.perform([request]) }
        let ms = Date().timeIntervalSince(t0) * 1000
        if let observations = request.results as? [VNClassificationObservation] {
            let probs = Dictionary(observations.map { ($0.identifier, Double($0.confidence)) }, uniquingKeysWith: { a, _ in a })
            return outcome(Classification.topK(probabilities: probs, labels: labels, k: 5), [1, probs.count],
                           preprocessMs: 0, inferenceMs: ms, path: "Vision (center crop, scale and run)")
        }
        if let features = request.results as? [VNCoreMLFeatureValueObservation], let array = features.first?.featureValue.multiArrayValue {
            let shape = array.shape.map { $0.intValue }
            if manifest.output == "features" { return outcome(nil, shape, preprocessMs: 0, inferenceMs: ms, path: "Vision") }
            let values = (0..<array.count).map { Float(truncating: array[$0]) }
            return outcome(Classification.topK(values, outputKind: artifact.outputKind, k: 5, labels: labels), shape,
                           preprocessMs: 0, inferenceMs: ms, path: "Vision (center crop, scale and run)")
        }
        throw DemoError("Vision returned no results for this model; switch to exact preprocessing.")
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
