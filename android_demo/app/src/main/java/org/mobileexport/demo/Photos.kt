package org.mobileexport.demo

import android.content.ContentResolver
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.net.Uri
import androidx.exifinterface.media.ExifInterface
import org.mobileexport.demo.core.Preprocessor
import org.mobileexport.demo.core.RgbImage

/**
 * A photo from the picker or the camera -> upright, straight-alpha ARGB pixels, decoded the
 * way the Python side decodes (see mobile_export/preprocess.py): JPEGs reduced by the same
 * power of two as Pillow's draft mode, EXIF orientation applied, alpha not premultiplied.
 */
object Photos {
    private const val MAX_PIXELS = 50_000_000L
    /** Largest non-JPEG decode: 16 MP of ARGB is 64 MB, copied at most twice below. */
    private const val DECODE_PIXELS = 16_000_000L

    fun decode(resolver: ContentResolver, uri: Uri, resize: Int): RgbImage {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        open(resolver, uri).use { BitmapFactory.decodeStream(it, null, bounds) }
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) {
            throw BundleException("That file is not an image this phone can decode; pick a JPEG or PNG photo.")
        }
        val jpeg = bounds.outMimeType == "image/jpeg"
        // JPEGs: the same draft reduction as Pillow. Other formats: exact up to DECODE_PIXELS,
        // reduced by a power of two beyond it (never below twice the resize target).
        val sample = if (jpeg) {
            Preprocessor.jpegSampleSize(bounds.outWidth, bounds.outHeight, resize)
        } else {
            Preprocessor.boundedSampleSize(bounds.outWidth, bounds.outHeight, resize, DECODE_PIXELS)
        }
        if (bounds.outWidth.toLong() * bounds.outHeight / (sample.toLong() * sample) > MAX_PIXELS) {
            throw BundleException("The image is too large (${bounds.outWidth}x${bounds.outHeight}); pick a smaller one.")
        }
        val options = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPremultiplied = false // straight alpha, as Pillow composites it
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        val bitmap = try {
            open(resolver, uri).use { BitmapFactory.decodeStream(it, null, options) }
        } catch (e: OutOfMemoryError) {
            throw BundleException("The photo (${bounds.outWidth}x${bounds.outHeight}) needs more memory than the app has; pick a smaller one.")
        } ?: throw BundleException("The image could not be decoded; pick another photo.")
        val w = bitmap.width
        val h = bitmap.height
        val pixels = IntArray(w * h)
        bitmap.getPixels(pixels, 0, w, 0, 0, w, h)
        bitmap.recycle()
        val orientation = open(resolver, uri).use {
            ExifInterface(it).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        }
        return RgbImage(w, h, pixels).oriented(orientation)
    }

    /** A small bitmap of what the model saw (upright, over white) for the screen. */
    fun preview(image: RgbImage, maxSide: Int = 720): Bitmap {
        val opaque = image.overWhite()
        val full = Bitmap.createBitmap(opaque.argb, opaque.width, opaque.height, Bitmap.Config.ARGB_8888)
        val scale = maxSide.toFloat() / maxOf(opaque.width, opaque.height)
        if (scale >= 1f) return full
        return Bitmap.createScaledBitmap(full, (opaque.width * scale).toInt().coerceAtLeast(1), (opaque.height * scale).toInt().coerceAtLeast(1), true)
    }

    private fun open(resolver: ContentResolver, uri: Uri) =
        resolver.openInputStream(uri) ?: throw BundleException("Could not open the photo; pick it again.")
}
