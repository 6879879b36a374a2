import Foundation
import XCTest

@testable import DemoLogic

#if canImport(CryptoKit)
    import CryptoKit
#endif

/// The golden vectors the Python side made from real photos (a small committed copy, made by
/// `python -m mobile_export.golden ios_demo/DemoLogic/Tests/DemoLogicTests/Golden --small`): the same
/// raw pixels must give the same upright image, the same input tensor within 1e-6, the same top 5.
final class GoldenTests: XCTestCase {
    static let dir: URL = {
        if let env = ProcessInfo.processInfo.environment["GOLDEN_DIR"] { return URL(fileURLWithPath: env) }
        return Bundle.module.url(forResource: "Golden", withExtension: nil)!
    }()

    func json(_ relative: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent(relative))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func text(_ relative: String) throws -> String {
        try XCTUnwrap(String(data: Data(contentsOf: Self.dir.appendingPathComponent(relative)), encoding: .utf8))
    }

    static func floats(_ b64: String) -> [Float] {
        let data = Data(base64Encoded: b64)!
        return data.withUnsafeBytes { raw in
            (0..<(data.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }

    static func rawImage(_ image: [String: Any]) -> RGBImage {
        let w = (image["width"] as! NSNumber).intValue
        let h = (image["height"] as! NSNumber).intValue
        let bytes = [UInt8](Data(base64Encoded: image["data"] as! String)!)
        switch image["kind"] as! String {
        case "gray": return RGBImage.fromGray(width: w, height: h, bytes: bytes)
        case "rgba": return RGBImage.fromRGBA(width: w, height: h, bytes: bytes)
        default: return RGBImage.fromRGB(width: w, height: h, bytes: bytes)
        }
    }

    static func spec(_ p: [String: Any]) -> PreprocessSpec {
        PreprocessSpec(
            resize: (p["resize"] as! NSNumber).intValue, crop: (p["crop"] as! NSNumber).intValue,
            interpolation: p["interpolation"] as! String,
            mean: (p["mean"] as! [NSNumber]).map { $0.doubleValue }, std: (p["std"] as! [NSNumber]).map { $0.doubleValue })
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count, "tensor lengths differ: \(a.count) vs \(b.count)")
        return zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
    }

    func testEveryCaseMatchesPython() throws {
        let index = try json("index.json")
        let tolerance = (index["tolerance"] as! NSNumber).doubleValue
        let names = index["cases"] as! [String]
        XCTAssertGreaterThanOrEqual(names.count, 10)
        let labels = Classification.parseLabels(try text("labels.txt"))
        var withTop5 = 0
        for name in names {
            let c = try json("cases/\(name).json")
            let image = c["image"] as! [String: Any]
            let upright = Self.rawImage(image).oriented((image["orientation"] as! NSNumber).intValue)
            let decoded = c["decoded"] as! [String: Any]
            XCTAssertEqual(upright.width, (decoded["width"] as! NSNumber).intValue, name)
            XCTAssertEqual(upright.height, (decoded["height"] as! NSNumber).intValue, name)
            #if canImport(CryptoKit)
                var rgb = [UInt8]()
                rgb.reserveCapacity(upright.argb.count * 3)
                for p in upright.overWhite().argb {
                    rgb.append(UInt8((p >> 16) & 0xFF)); rgb.append(UInt8((p >> 8) & 0xFF)); rgb.append(UInt8(p & 0xFF))
                }
                let digest = SHA256.hash(data: Data(rgb)).map { String(format: "%02x", $0) }.joined()
                XCTAssertEqual(digest, decoded["sha256"] as? String, "\(name): decoded RGB bytes")
            #endif
            let spec = Self.spec(c["preprocess"] as! [String: Any])
            let unit = Self.maxAbsDiff(Preprocessor.toTensor(upright, spec: spec, normalize: false), Self.floats(c["unit"] as! String))
            let norm = Self.maxAbsDiff(Preprocessor.toTensor(upright, spec: spec, normalize: true), Self.floats(c["normalized"] as! String))
            XCTAssertLessThanOrEqual(unit, tolerance, "\(name): [0,1] tensor")
            XCTAssertLessThanOrEqual(norm, tolerance, "\(name): normalized tensor")
            if let jpeg = c["jpeg"] as? [String: Any] {
                XCTAssertEqual(
                    Preprocessor.jpegSampleSize(width: (jpeg["raw_width"] as! NSNumber).intValue, height: (jpeg["raw_height"] as! NSNumber).intValue, resize: spec.resize),
                    (jpeg["scale"] as! NSNumber).intValue, name)
            }
            if let expected = c["top5"] as? [[String: Any]] {
                withTop5 += 1
                let top = Classification.topK(Self.floats(c["logits"] as! String), outputKind: c["output_kind"] as! String, k: 5, labels: labels)
                XCTAssertEqual(top.map { $0.index }, expected.map { ($0["index"] as! NSNumber).intValue }, name)
                XCTAssertEqual(top.map { $0.label }, expected.map { $0["label"] as! String }, name)
                for (t, e) in zip(top, expected) {
                    XCTAssertEqual(t.probability, (e["probability"] as! NSNumber).doubleValue, accuracy: 1e-12, name)
                }
            }
        }
        XCTAssertGreaterThan(withTop5, 0, "no case carried logits")
    }

    func testLabelsParseLikePython() throws {
        let parsed = Classification.parseLabels(try text("labels.txt"))
        let expected = (try json("index.json")["labels"] as! [String: Any])["parsed"] as! [String]
        XCTAssertEqual(parsed, expected)
    }

    func testJpegReductionTable() throws {
        for row in try json("index.json")["jpeg_draft"] as! [[String: Any]] {
            let n = { (k: String) in (row[k] as! NSNumber).intValue }
            XCTAssertEqual(Preprocessor.jpegSampleSize(width: n("width"), height: n("height"), resize: n("resize")), n("scale"), "\(row)")
        }
    }

    func testExporterManifestParses() throws {
        let expect = try json("index.json")["manifest"] as! [String: Any]
        let m = try DemoManifest(json: Data(contentsOf: Self.dir.appendingPathComponent("manifest.json")))
        XCTAssertEqual(m.modelName, expect["model"] as? String)
        XCTAssertEqual(m.preprocess.crop, (expect["crop"] as! NSNumber).intValue)
        XCTAssertEqual(m.labels?.count, (expect["labels_count"] as! NSNumber).intValue)
        XCTAssertEqual(m.artifacts.map { $0.file }, expect["artifacts"] as? [String])
        let package = try m.runnable(format: "mlpackage")
        XCTAssertEqual(package.inputKind, "image")
        XCTAssertEqual(package.outputKind, "classifier")
        XCTAssertEqual(package.compiledName + ".mlpackage", package.file)
        XCTAssertTrue(try m.runnable(format: "pte").appNormalizes)
        XCTAssertThrowsError(try m.runnable(format: "tflite"))
    }

    func testEveryRunnableFileIsListedWithItsRuntime() throws {
        let m = try DemoManifest(json: Data(contentsOf: Self.dir.appendingPathComponent("manifest.json")))
        let runnable = try m.runnableArtifacts(formats: ["mlpackage", "pte"])
        XCTAssertEqual(runnable.map { $0.file }, m.artifacts.filter { ["mlpackage", "pte"].contains($0.format) }.map { $0.file })
        for a in runnable {
            XCTAssertEqual(a.runtime.name, a.format == "pte" ? "ExecuTorch" : "Core ML")
        }
        XCTAssertThrowsError(try m.runnableArtifacts(formats: ["tflite"]))
    }

    func testFeatureModelManifestParses() throws {
        let doc = try json("index.json")["features_manifest"]!
        let m = try DemoManifest(json: JSONSerialization.data(withJSONObject: doc))
        XCTAssertEqual(m.output, "features")
        let package = try m.runnable(format: "mlpackage")
        XCTAssertEqual(package.outputKind, "features")
        XCTAssertNil(package.outputShape)
    }

    func testBrokenManifestsGiveOneLineMessages() throws {
        let bad = try json("index.json")["bad_manifests"] as! [[String: Any]]
        XCTAssertGreaterThanOrEqual(bad.count, 5)
        for c in bad {
            let data = try JSONSerialization.data(withJSONObject: c["manifest"]!)
            XCTAssertThrowsError(try DemoManifest(json: data), c["name"] as! String) { error in
                let message = (error as? ManifestError)?.description ?? ""
                XCTAssertTrue(message.contains(c["error"] as! String), "\(c["name"]!): '\(message)'")
                XCTAssertFalse(message.contains("\n"))
            }
        }
        for junk in ["", "{", "[1,2]", "{\"format\": 1}"] {
            XCTAssertThrowsError(try DemoManifest(json: Data(junk.utf8)))
        }
    }

    func testTopKIsStable() {
        let top = Classification.topK([1, 3, 3, -2, 10, 10], outputKind: "logits", k: 3, labels: ["a", "b"])
        XCTAssertEqual(top.map { $0.index }, [4, 5, 1])
        XCTAssertEqual(top[2].label, "b")
        XCTAssertEqual(top[0].label, "class 4")
        let ranked = Classification.topK(probabilities: ["cat": 0.2, "dog": 0.7, "eel": 0.1], labels: ["cat", "dog", "eel"], k: 2)
        XCTAssertEqual(ranked.map { $0.label }, ["dog", "cat"])
        XCTAssertEqual(ranked.map { $0.index }, [1, 0])
    }
}
