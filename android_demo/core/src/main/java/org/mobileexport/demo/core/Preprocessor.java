package org.mobileexport.demo.core;

/**
 * Decoded pixels -> the model's input tensor, exactly as mobile_export/preprocess.py:
 * resize the shorter side to spec.resize with the separable antialiased filter (no rounding
 * between the two passes), center-crop (offset (size - crop) / 2, rounded down), scale to
 * [0, 1], clip, then optionally (x - mean) / std in float32. Output: float32 CHW, 3 x crop x crop.
 */
public final class Preprocessor {
    private static final float[] UNIT = new float[256];

    static {
        for (int i = 0; i < 256; i++) {
            UNIT[i] = i / 255.0f; // float32 division, as numpy's pixels.astype(float32) / 255
        }
    }

    private Preprocessor() {
    }

    /** {height, width} after scaling the shorter side to `shorter` (longer side rounded down). */
    public static int[] resizedSize(int height, int width, int shorter) {
        if (height <= width) {
            return new int[] {shorter, Math.max(shorter, (int) ((double) width * shorter / height))};
        }
        return new int[] {Math.max(shorter, (int) ((double) height * shorter / width)), shorter};
    }

    /**
     * The reduction a JPEG decoder may apply before resizing (Android inSampleSize), the rule of
     * Pillow's draft mode as the Python side uses it: the largest of 8, 4, 2, 1 that keeps both
     * sides at least 2 x resize.
     */
    public static int jpegSampleSize(int width, int height, int resize) {
        int target = 2 * resize;
        int scale = Math.min(width / target, height / target);
        for (int a : new int[] {8, 4, 2}) {
            if (scale >= a) {
                return a;
            }
        }
        return 1;
    }

    /**
     * Power-of-two sample size for a non-JPEG photo (PNG, WebP, HEIF), which Android would
     * otherwise decode at full size (up to 50 MP, 200 MB of ARGB, copied several times).
     * Images within {@code maxPixels} decode exactly as the Python side does (1); larger ones are
     * reduced until they fit, but never so far that the shorter side drops below twice the
     * resize target (the resampling then still averages over whole source pixels).
     */
    public static int boundedSampleSize(int width, int height, int resize, long maxPixels) {
        int sample = 1;
        while ((long) width * height / ((long) sample * sample) > maxPixels
                && Math.min(width, height) / (sample * 2) >= 2 * resize) {
            sample *= 2;
        }
        return sample;
    }

    /** float32 CHW tensor (3 * crop * crop) in the manifest's contract. */
    public static float[] toTensor(RgbImage image, PreprocessSpec spec, boolean normalize) {
        RgbImage img = image.overWhite();
        int h = img.height;
        int w = img.width;
        int crop = spec.crop;
        int[] size = resizedSize(h, w, spec.resize);
        int rh = size[0];
        int rw = size[1];
        if (crop > Math.min(rh, rw)) {
            throw new IllegalArgumentException("crop " + crop + " is larger than the resized image " + rw + "x" + rh);
        }
        int top = (rh - crop) / 2;
        int left = (rw - crop) / 2;
        Resampler.Row[] ys = Resampler.rows(h, rh, spec.interpolation, top, crop);
        Resampler.Row[] xs = Resampler.rows(w, rw, spec.interpolation, left, crop);

        // Only the source columns that some output column reads.
        int colLo = Integer.MAX_VALUE;
        int colHi = 0;
        for (Resampler.Row r : xs) {
            colLo = Math.min(colLo, r.start);
            colHi = Math.max(colHi, r.start + r.weights.length - 1);
        }
        int cols = colHi - colLo + 1;

        // Vertical pass in double: tmp[c][y][x - colLo].
        double[] tmp = new double[3 * crop * cols];
        int plane = crop * cols;
        int[] px = img.argb;
        for (int y = 0; y < crop; y++) {
            Resampler.Row row = ys[y];
            int base = y * cols;
            for (int k = 0; k < row.weights.length; k++) {
                double wgt = row.weights[k];
                if (wgt == 0.0) {
                    continue;
                }
                int src = (row.start + k) * w + colLo;
                for (int x = 0; x < cols; x++) {
                    int p = px[src + x];
                    tmp[base + x] += wgt * UNIT[(p >> 16) & 0xFF];
                    tmp[plane + base + x] += wgt * UNIT[(p >> 8) & 0xFF];
                    tmp[2 * plane + base + x] += wgt * UNIT[p & 0xFF];
                }
            }
        }

        // Horizontal pass, then round once to float32 and clip to [0, 1].
        float[] out = new float[3 * crop * crop];
        for (int c = 0; c < 3; c++) {
            float mean = (float) spec.mean[c];
            float std = (float) spec.std[c];
            for (int y = 0; y < crop; y++) {
                int base = c * plane + y * cols;
                for (int x = 0; x < crop; x++) {
                    Resampler.Row row = xs[x];
                    double acc = 0.0;
                    for (int k = 0; k < row.weights.length; k++) {
                        acc += row.weights[k] * tmp[base + row.start - colLo + k];
                    }
                    float v = (float) acc;
                    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
                    if (normalize) {
                        v = (v - mean) / std;
                    }
                    out[(c * crop + y) * crop + x] = v;
                }
            }
        }
        return out;
    }
}
