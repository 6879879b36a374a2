import Foundation

/// Decoded pixels, one UInt32 per pixel as 0xAARRGGBB, row-major, straight (not premultiplied)
/// alpha. Alpha is composited over white the way Pillow does.
public struct RGBImage: Equatable {
    public let width: Int
    public let height: Int
    public let argb: [UInt32]

    public init(width: Int, height: Int, argb: [UInt32]) {
        precondition(width > 0 && height > 0 && argb.count == width * height, "image of \(width)x\(height) needs \(width * height) pixels")
        self.width = width
        self.height = height
        self.argb = argb
    }

    /// From 8-bit RGB bytes (HxWx3).
    public static func fromRGB(width: Int, height: Int, bytes: [UInt8]) -> RGBImage {
        var px = [UInt32](repeating: 0, count: width * height)
        for i in 0..<px.count {
            px[i] = pack(255, bytes[3 * i], bytes[3 * i + 1], bytes[3 * i + 2])
        }
        return RGBImage(width: width, height: height, argb: px)
    }

    /// From 8-bit gray bytes: the same value in R, G and B, as Pillow's convert("RGB").
    public static func fromGray(width: Int, height: Int, bytes: [UInt8]) -> RGBImage {
        var px = [UInt32](repeating: 0, count: width * height)
        for i in 0..<px.count {
            px[i] = pack(255, bytes[i], bytes[i], bytes[i])
        }
        return RGBImage(width: width, height: height, argb: px)
    }

    /// From 8-bit RGBA bytes (HxWx4, straight alpha).
    public static func fromRGBA(width: Int, height: Int, bytes: [UInt8]) -> RGBImage {
        var px = [UInt32](repeating: 0, count: width * height)
        for i in 0..<px.count {
            px[i] = pack(bytes[4 * i + 3], bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2])
        }
        return RGBImage(width: width, height: height, argb: px)
    }

    /// Opaque RGB over white with Pillow's alpha_composite integer arithmetic.
    public func overWhite() -> RGBImage {
        RGBImage(width: width, height: height, argb: argb.map { (p: UInt32) -> UInt32 in
            let a = p >> 24
            if a == 255 { return p }
            if a == 0 { return 0xFFFF_FFFF }
            let r = Self.blend((p >> 16) & 0xFF, a)
            let g = Self.blend((p >> 8) & 0xFF, a)
            let b = Self.blend(p & 0xFF, a)
            return (0xFF00_0000 as UInt32) | (r << 16) | (g << 8) | b
        })
    }

    /// 0xAARRGGBB from four bytes.
    public static func pack(_ a: UInt8, _ r: UInt8, _ g: UInt8, _ b: UInt8) -> UInt32 {
        let high: UInt32 = (UInt32(a) << 24) | (UInt32(r) << 16)
        let low: UInt32 = (UInt32(g) << 8) | UInt32(b)
        return high | low
    }

    private static func blend(_ src: UInt32, _ alpha: UInt32) -> UInt32 {
        // Pillow AlphaComposite.c with an opaque white destination, 7 extra bits of precision.
        let one: UInt64 = 1 << 7
        let a = UInt64(alpha)
        let outA255: UInt64 = a * 255 + 255 * (255 - a)
        let coef1: UInt64 = a * 255 * 255 * one / outA255
        let coef2: UInt64 = 255 * one - coef1
        let tmp: UInt64 = UInt64(src) * coef1 + 255 * coef2 + 0x80 * one
        let shifted: UInt64 = ((tmp >> 8) + tmp) >> 8
        return UInt32(shifted >> 7)
    }

    /// Applies an EXIF orientation (1...8) so the pixels stand upright, as Pillow's exif_transpose.
    public func oriented(_ orientation: Int) -> RGBImage {
        guard (2...8).contains(orientation) else { return self }
        let w = width, h = height
        let swap = orientation >= 5
        let ow = swap ? h : w, oh = swap ? w : h
        var out = [UInt32](repeating: 0, count: argb.count)
        for y in 0..<oh {
            for x in 0..<ow {
                let s: (x: Int, y: Int)
                switch orientation {
                case 2: s = (w - 1 - x, y)  // mirror left-right
                case 3: s = (w - 1 - x, h - 1 - y)  // rotate 180
                case 4: s = (x, h - 1 - y)  // mirror top-bottom
                case 5: s = (y, x)  // transpose
                case 6: s = (y, h - 1 - x)  // rotate 90 clockwise
                case 7: s = (w - 1 - y, h - 1 - x)  // transverse
                default: s = (w - 1 - y, x)  // 8: rotate 90 counter-clockwise
                }
                out[y * ow + x] = argb[s.y * w + s.x]
            }
        }
        return RGBImage(width: ow, height: oh, argb: out)
    }
}

/// Rows of the separable resampling matrix, the numbers of mobile_export.preprocess.resample_weights.
public enum Resampler {
    public struct Row {
        public let start: Int
        public let weights: [Float]
    }

    public static func knows(_ interpolation: String) -> Bool {
        ["bilinear", "bicubic", "nearest"].contains(interpolation)
    }

    static func triangle(_ x: Double) -> Double {
        let x = abs(x)
        return x < 1.0 ? 1.0 - x : 0.0
    }

    static func cubic(_ x: Double) -> Double {
        let a = -0.5  // Keys' cubic, as Pillow and torchvision
        let x = abs(x)
        if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0 }
        if x < 2.0 { return (((x - 5.0) * x + 8.0) * x - 4.0) * a }
        return 0.0
    }

    /// Rows for outputs first ..< first + count of an inSize -> outSize resize.
    public static func rows(inSize: Int, outSize: Int, interpolation: String, first: Int, count: Int) -> [Row] {
        let scale = Double(inSize) / Double(outSize)
        if interpolation == "nearest" {
            return (0..<count).map { i in
                Row(start: min(Int(((Double(first + i) + 0.5) * scale).rounded(.down)), inSize - 1), weights: [1.0])
            }
        }
        let isCubic = interpolation == "bicubic"
        let support = isCubic ? 2.0 : 1.0
        let stretch = max(scale, 1.0)
        let reach = support * stretch
        return (0..<count).map { i in
            let center = (Double(first + i) + 0.5) * scale
            let lo = max(0, Int((center - reach - 0.5).rounded(.down)) - 1)
            let hi = min(inSize - 1, Int((center + reach - 0.5).rounded(.up)) + 1)
            var w = [Double](repeating: 0, count: hi - lo + 1)
            var total = 0.0
            for j in lo...hi {
                let d = (Double(j) + 0.5) - center
                let v = abs(d) >= reach ? 0.0 : (isCubic ? cubic(d / stretch) : triangle(d / stretch))
                w[j - lo] = v
                total += v
            }
            if total == 0.0 { total = 1.0 }
            return Row(start: lo, weights: w.map { Float($0 / total) })
        }
    }
}

/// Pixels -> the model's float32 CHW input, exactly as mobile_export/preprocess.py (and
/// android_demo's Preprocessor.java): separable antialiased resize of the shorter side in
/// double, center crop at (size - crop) / 2, one rounding to float32, clip, optional normalize.
public enum Preprocessor {
    private static let unit: [Float] = (0..<256).map { Float($0) / 255.0 }

    /// (height, width) after scaling the shorter side to `shorter`, the longer rounded down.
    public static func resizedSize(height: Int, width: Int, shorter: Int) -> (Int, Int) {
        if height <= width {
            return (shorter, max(shorter, Int(Double(width) * Double(shorter) / Double(height))))
        }
        return (max(shorter, Int(Double(height) * Double(shorter) / Double(width))), shorter)
    }

    /// The JPEG reduction of Pillow's draft mode as the Python side uses it (8, 4, 2 or 1).
    public static func jpegSampleSize(width: Int, height: Int, resize: Int) -> Int {
        let scale = min(width / (2 * resize), height / (2 * resize))
        for a in [8, 4, 2] where scale >= a { return a }
        return 1
    }

    public static func toTensor(_ image: RGBImage, spec: PreprocessSpec, normalize: Bool) -> [Float] {
        let img = image.overWhite()
        let h = img.height, w = img.width, crop = spec.crop
        let (rh, rw) = resizedSize(height: h, width: w, shorter: spec.resize)
        precondition(crop <= min(rh, rw), "crop \(crop) is larger than the resized image \(rw)x\(rh)")
        let ys = Resampler.rows(inSize: h, outSize: rh, interpolation: spec.interpolation, first: (rh - crop) / 2, count: crop)
        let xs = Resampler.rows(inSize: w, outSize: rw, interpolation: spec.interpolation, first: (rw - crop) / 2, count: crop)
        let colLo = xs.map { $0.start }.min()!
        let colHi = xs.map { $0.start + $0.weights.count - 1 }.max()!
        let cols = colHi - colLo + 1
        let plane = crop * cols

        // Vertical pass in double over the needed columns.
        var tmp = [Double](repeating: 0, count: 3 * plane)
        img.argb.withUnsafeBufferPointer { px in
            for y in 0..<crop {
                let row = ys[y]
                let base = y * cols
                for (k, wf) in row.weights.enumerated() where wf != 0 {
                    let wgt = Double(wf)
                    let src = (row.start + k) * w + colLo
                    for x in 0..<cols {
                        let p = px[src + x]
                        tmp[base + x] += wgt * Double(unit[Int((p >> 16) & 0xFF)])
                        tmp[plane + base + x] += wgt * Double(unit[Int((p >> 8) & 0xFF)])
                        tmp[2 * plane + base + x] += wgt * Double(unit[Int(p & 0xFF)])
                    }
                }
            }
        }

        // Horizontal pass, one rounding to float32, clip, optional (x - mean) / std in float32.
        var out = [Float](repeating: 0, count: 3 * crop * crop)
        for c in 0..<3 {
            let mean = Float(spec.mean[c]), std = Float(spec.std[c])
            for y in 0..<crop {
                let base = c * plane + y * cols
                for x in 0..<crop {
                    let row = xs[x]
                    var acc = 0.0
                    for (k, wf) in row.weights.enumerated() {
                        acc += Double(wf) * tmp[base + row.start - colLo + k]
                    }
                    var v = Float(acc)
                    v = v < 0 ? 0 : (v > 1 ? 1 : v)
                    if normalize { v = (v - mean) / std }
                    out[(c * crop + y) * crop + x] = v
                }
            }
        }
        return out
    }
}
