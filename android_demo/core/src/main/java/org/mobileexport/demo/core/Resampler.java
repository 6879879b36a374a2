package org.mobileexport.demo.core;

/**
 * Rows of the separable resampling matrix, the same numbers as
 * mobile_export.preprocess.resample_weights: output pixel i samples around (i + 0.5) * in/out;
 * when shrinking the filter widens by the scale (antialiasing, as in Pillow); each row sums to 1;
 * computed in double, then rounded to float32 like the Python side.
 */
public final class Resampler {
    private Resampler() {
    }

    /** Sparse row: weights for input pixels start .. start + weights.length - 1. */
    public static final class Row {
        public final int start;
        public final float[] weights;

        Row(int start, float[] weights) {
            this.start = start;
            this.weights = weights;
        }
    }

    public static boolean knows(String interpolation) {
        return "bilinear".equals(interpolation) || "bicubic".equals(interpolation) || "nearest".equals(interpolation);
    }

    static double triangle(double x) {
        x = Math.abs(x);
        return x < 1.0 ? 1.0 - x : 0.0;
    }

    static double cubic(double x) {
        final double a = -0.5; // Keys' cubic with a = -0.5, as Pillow and torchvision
        x = Math.abs(x);
        if (x < 1.0) {
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
        }
        if (x < 2.0) {
            return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
        }
        return 0.0;
    }

    /** Rows for output pixels first .. first + count - 1 of an in -> out resize. */
    public static Row[] rows(int inSize, int outSize, String interpolation, int first, int count) {
        double scale = (double) inSize / (double) outSize;
        Row[] rows = new Row[count];
        if ("nearest".equals(interpolation)) {
            for (int i = 0; i < count; i++) {
                int src = (int) Math.min(Math.floor((first + i + 0.5) * scale), inSize - 1);
                rows[i] = new Row(src, new float[] {1.0f});
            }
            return rows;
        }
        boolean cubic = "bicubic".equals(interpolation);
        if (!cubic && !"bilinear".equals(interpolation)) {
            throw new IllegalArgumentException("unknown interpolation " + interpolation);
        }
        double support = cubic ? 2.0 : 1.0;
        double stretch = Math.max(scale, 1.0);
        double reach = support * stretch;
        for (int i = 0; i < count; i++) {
            double center = (first + i + 0.5) * scale;
            int lo = Math.max(0, (int) Math.floor(center - reach - 0.5) - 1);
            int hi = Math.min(inSize - 1, (int) Math.ceil(center + reach - 0.5) + 1);
            double[] w = new double[hi - lo + 1];
            double total = 0.0;
            for (int j = lo; j <= hi; j++) {
                double d = (j + 0.5) - center;
                double v = Math.abs(d) >= reach ? 0.0 : (cubic ? cubic(d / stretch) : triangle(d / stretch));
                w[j - lo] = v;
                total += v;
            }
            if (total == 0.0) {
                total = 1.0;
            }
            float[] f = new float[w.length];
            for (int k = 0; k < w.length; k++) {
                f[k] = (float) (w[k] / total);
            }
            rows[i] = new Row(lo, f);
        }
        return rows;
    }
}
