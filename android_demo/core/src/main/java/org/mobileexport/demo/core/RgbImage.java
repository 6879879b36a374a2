package org.mobileexport.demo.core;

/**
 * Decoded pixels as Android's Bitmap.getPixels gives them: one int per pixel, 0xAARRGGBB,
 * row-major, not premultiplied. Alpha is composited over white the way Pillow does, so a
 * transparent PNG gives the numbers the Python side gets.
 */
public final class RgbImage {
    public final int width;
    public final int height;
    public final int[] argb;

    public RgbImage(int width, int height, int[] argb) {
        if (width < 1 || height < 1 || argb.length != width * height) {
            throw new IllegalArgumentException("image of " + width + "x" + height + " needs " + (long) width * height + " pixels, got " + argb.length);
        }
        this.width = width;
        this.height = height;
        this.argb = argb;
    }

    /** From 8-bit RGB bytes (HxWx3), e.g. what another decoder or a test vector holds. */
    public static RgbImage fromRgbBytes(int width, int height, byte[] rgb) {
        int[] px = new int[width * height];
        for (int i = 0; i < px.length; i++) {
            px[i] = 0xFF000000 | (rgb[3 * i] & 0xFF) << 16 | (rgb[3 * i + 1] & 0xFF) << 8 | (rgb[3 * i + 2] & 0xFF);
        }
        return new RgbImage(width, height, px);
    }

    /** From 8-bit gray bytes: the same value in R, G and B, as Pillow's convert("RGB"). */
    public static RgbImage fromGrayBytes(int width, int height, byte[] gray) {
        int[] px = new int[width * height];
        for (int i = 0; i < px.length; i++) {
            int v = gray[i] & 0xFF;
            px[i] = 0xFF000000 | v << 16 | v << 8 | v;
        }
        return new RgbImage(width, height, px);
    }

    /** From 8-bit RGBA bytes (HxWx4, straight alpha). */
    public static RgbImage fromRgbaBytes(int width, int height, byte[] rgba) {
        int[] px = new int[width * height];
        for (int i = 0; i < px.length; i++) {
            px[i] = (rgba[4 * i + 3] & 0xFF) << 24 | (rgba[4 * i] & 0xFF) << 16 | (rgba[4 * i + 1] & 0xFF) << 8 | (rgba[4 * i + 2] & 0xFF);
        }
        return new RgbImage(width, height, px);
    }

    /** Opaque RGB over a white background, with Pillow's alpha_composite integer arithmetic. */
    public RgbImage overWhite() {
        int[] out = new int[argb.length];
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i];
            int a = p >>> 24;
            if (a == 255) {
                out[i] = p;
            } else if (a == 0) {
                out[i] = 0xFFFFFFFF;
            } else {
                out[i] = 0xFF000000 | blend((p >> 16) & 0xFF, a) << 16 | blend((p >> 8) & 0xFF, a) << 8 | blend(p & 0xFF, a);
            }
        }
        return new RgbImage(width, height, out);
    }

    private static int blend(int src, int alpha) {
        // Pillow AlphaComposite.c with an opaque white destination, 7 extra bits of precision.
        final int bits = 7;
        long outA255 = (long) alpha * 255 + 255L * (255 - alpha);
        long coef1 = (long) alpha * 255 * 255 * (1 << bits) / outA255;
        long coef2 = 255L * (1 << bits) - coef1;
        long tmp = src * coef1 + 255L * coef2 + (0x80L << bits);
        return (int) ((((tmp >> 8) + tmp) >> 8) >> bits);
    }

    /**
     * Applies an EXIF orientation (1..8) so the pixels stand upright, as Pillow's
     * ImageOps.exif_transpose; unknown values leave the image as it is.
     */
    public RgbImage oriented(int orientation) {
        int w = width;
        int h = height;
        boolean swap = orientation >= 5 && orientation <= 8;
        int ow = swap ? h : w;
        int oh = swap ? w : h;
        if (orientation < 2 || orientation > 8) {
            return this;
        }
        int[] out = new int[argb.length];
        for (int y = 0; y < oh; y++) {
            for (int x = 0; x < ow; x++) {
                int sx;
                int sy;
                switch (orientation) {
                    case 2: sx = w - 1 - x; sy = y; break;           // mirror left-right
                    case 3: sx = w - 1 - x; sy = h - 1 - y; break;   // rotate 180
                    case 4: sx = x; sy = h - 1 - y; break;           // mirror top-bottom
                    case 5: sx = y; sy = x; break;                   // transpose
                    case 6: sx = y; sy = h - 1 - x; break;           // rotate 90 clockwise
                    case 7: sx = w - 1 - y; sy = h - 1 - x; break;   // transverse
                    default: sx = w - 1 - y; sy = x; break;          // 8: rotate 90 counter-clockwise
                }
                out[y * ow + x] = argb[sy * w + sx];
            }
        }
        return new RgbImage(ow, oh, out);
    }
}
