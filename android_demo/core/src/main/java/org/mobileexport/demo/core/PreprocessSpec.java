package org.mobileexport.demo.core;

/**
 * The input contract from manifest.json "preprocess": resize the shorter side to {@code resize},
 * center-crop {@code crop} x {@code crop}, scale to [0, 1], then (x - mean) / std unless the model
 * normalizes inside. Mirrors mobile_export/preprocess.py; no number of it is typed in the app.
 */
public final class PreprocessSpec {
    public final int resize;
    public final int crop;
    public final String interpolation; // bilinear | bicubic | nearest
    public final double[] mean;
    public final double[] std;

    public PreprocessSpec(int resize, int crop, String interpolation, double[] mean, double[] std) {
        this.resize = resize;
        this.crop = crop;
        this.interpolation = interpolation;
        this.mean = mean.clone();
        this.std = std.clone();
    }
}
