package org.mobileexport.demo

import android.content.Context
import java.io.File
import java.io.FileNotFoundException
import java.security.MessageDigest
import org.mobileexport.demo.core.Classification
import org.mobileexport.demo.core.Manifest
import org.mobileexport.demo.core.ManifestException

/** A problem the screen shows as one line: what is wrong and how to fix it. */
class BundleException(message: String) : Exception(message)

/**
 * What `mobile-export bundle --app android` put into assets/: the manifest, labels, the .pte
 * (and maybe a .bpte), with the model files copied to filesDir because Module.load needs a path.
 */
class ModelBundle(
    val manifest: Manifest,
    val labels: List<String>?,
    val model: Manifest.Artifact,
    val modelFile: File,
    val bundled: Manifest.Artifact?,
    val bundledFile: File?,
) {
    val isClassifier: Boolean get() = manifest.output == "logits" && model.outputKind != "features"

    companion object {
        private const val MANIFEST = "manifest.json"

        /** Reads and checks everything; throws BundleException / ManifestException for the screen. */
        fun load(context: Context): ModelBundle {
            val text = try {
                context.assets.open(MANIFEST).use { it.readBytes().toString(Charsets.UTF_8) }
            } catch (e: FileNotFoundException) {
                throw BundleException("No model is bundled. Run `mobile-export bundle MODEL.pte --app android`, then rebuild the app.")
            }
            val manifest = Manifest.parse(text)
            val model = manifest.runnable("pte")
            val labels = manifest.labels?.let { ref ->
                val raw = readAsset(context, ref.file, "labels file")
                if (sha256(raw) != ref.sha256) {
                    throw BundleException("${ref.file} does not match its sha256 in the manifest; bundle the model again.")
                }
                val parsed = Classification.parseLabels(raw.toString(Charsets.UTF_8))
                if (parsed.size != ref.count || parsed.size != manifest.numClasses) {
                    throw BundleException("${ref.file} has ${parsed.size} labels but the model has ${manifest.numClasses} classes; export again with matching labels.")
                }
                parsed
            }
            val modelFile = copyOut(context, model)
            val bundled = manifest.artifact("bpte")
            val bundledFile = bundled?.let { copyOut(context, it) }
            return ModelBundle(manifest, labels, model, modelFile, bundled, bundledFile)
        }

        private fun readAsset(context: Context, name: String, what: String): ByteArray = try {
            context.assets.open(name).use { it.readBytes() }
        } catch (e: FileNotFoundException) {
            throw BundleException("The manifest lists $what $name but it is not in the app; bundle the model again.")
        }

        /**
         * Copies an asset to filesDir/models/<sha256>.<ext>, hashing while copying: a file whose
         * bytes differ from the manifest is refused (a .pte has no checksum of its own, and
         * flipped weights would run silently). Content-addressed, so a new bundle never reuses a stale copy.
         */
        private fun copyOut(context: Context, artifact: Manifest.Artifact): File {
            val dir = File(context.filesDir, "models").apply { mkdirs() }
            val dest = File(dir, "${artifact.sha256}.${artifact.format}")
            if (dest.isFile && dest.length() == artifact.bytes) return dest
            val tmp = File(dir, "${dest.name}.tmp")
            val digest = MessageDigest.getInstance("SHA-256")
            try {
                context.assets.open(artifact.file).use { input ->
                    tmp.outputStream().use { out ->
                        val buffer = ByteArray(1 shl 16)
                        while (true) {
                            val n = input.read(buffer)
                            if (n < 0) break
                            digest.update(buffer, 0, n)
                            out.write(buffer, 0, n)
                        }
                    }
                }
            } catch (e: FileNotFoundException) {
                throw BundleException("${artifact.file} is listed in the manifest but not bundled; run `mobile-export bundle` again.")
            }
            if (hex(digest.digest()) != artifact.sha256) {
                tmp.delete()
                throw BundleException("${artifact.file} does not match its sha256 in the manifest; it was changed or damaged, bundle it again.")
            }
            if (!tmp.renameTo(dest)) {
                tmp.delete()
                throw BundleException("Could not store ${artifact.file} in the app's files; free some space and restart.")
            }
            return dest
        }

        fun sha256(bytes: ByteArray): String = hex(MessageDigest.getInstance("SHA-256").digest(bytes))

        private fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it.toInt() and 0xFF) }
    }
}

/** The one line to show for anything that went wrong while loading. */
fun Throwable.screenMessage(): String = when (this) {
    is BundleException, is ManifestException -> message ?: javaClass.simpleName
    is OutOfMemoryError -> "Out of memory while processing the photo; pick a smaller one."
    else -> "${javaClass.simpleName}: ${message ?: "no details"}"
}
