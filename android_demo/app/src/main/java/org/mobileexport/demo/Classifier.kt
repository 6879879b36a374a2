package org.mobileexport.demo

import android.os.SystemClock
import java.io.Closeable
import java.io.File
import org.mobileexport.demo.core.BundledProgram
import org.mobileexport.demo.core.Classification
import org.mobileexport.demo.core.Preprocessor
import org.mobileexport.demo.core.RgbImage
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** One run on one photo: top 5 (classifiers) or the output shape (feature models), and timings. */
data class Outcome(
    val top5: List<Classification.Prediction>?,
    val outputShape: List<Long>,
    val preprocessMs: Double,
    val inferenceMs: Double,
)

/** The on-device self-check of a .bpte: each bundled input run here against its expected output. */
data class SelfCheckReport(val passed: Boolean, val lines: List<String>)

/** The .pte behind the manifest's input contract. Not thread-safe: use from one worker. */
class Classifier(private val bundle: ModelBundle) : Closeable {
    private val module: Module = Module.load(bundle.modelFile.absolutePath)
    private val crop = bundle.manifest.preprocess.crop.toLong()

    init {
        // The first forward allocates and plans; do it now so the first photo's latency is honest.
        module.forward(EValue.from(Tensor.fromBlob(FloatArray((3 * crop * crop).toInt()), longArrayOf(1, 3, crop, crop))))
    }

    fun classify(image: RgbImage): Outcome {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val input = Preprocessor.toTensor(image, bundle.manifest.preprocess, bundle.model.appNormalizes())
        val t1 = SystemClock.elapsedRealtimeNanos()
        val output = module.forward(EValue.from(Tensor.fromBlob(input, longArrayOf(1, 3, crop, crop))))[0].toTensor()
        val t2 = SystemClock.elapsedRealtimeNanos()
        val values = output.dataAsFloatArray
        val top5 = if (bundle.isClassifier) Classification.topK(values, bundle.model.outputKind, 5, bundle.labels) else null
        return Outcome(top5, output.shape().toList(), (t1 - t0) / 1e6, (t2 - t1) / 1e6)
    }

    override fun close() = module.destroy()

    companion object {
        /** Runs the program inside the .bpte on its own bundled inputs and compares outputs. */
        fun selfCheck(bundle: ModelBundle): SelfCheckReport {
            val file = bundle.bundledFile
            val artifact = bundle.bundled
            if (file == null || artifact == null) {
                return SelfCheckReport(false, listOf("No .bpte is bundled; export with --bundled to get a self-check."))
            }
            val program = BundledProgram.parse(file.readBytes())
            val extracted = File(file.parentFile, "${artifact.sha256}.program.pte")
            if (!extracted.isFile || extracted.length() != program.program.size.toLong()) {
                val tmp = File(extracted.path + ".tmp")
                tmp.writeBytes(program.program)
                tmp.renameTo(extracted)
            }
            val module = Module.load(extracted.absolutePath)
            val lines = mutableListOf<String>()
            var passed = true
            try {
                val suite = program.suites.firstOrNull { it.methodName == "forward" }
                    ?: return SelfCheckReport(false, listOf("The .bpte has no test cases for forward; export it again."))
                suite.cases.forEachIndexed { i, case ->
                    val inputs = case.inputs.map { EValue.from(Tensor.fromBlob(it.floats(), it.shape())) }
                    val actual = module.forward(*inputs.toTypedArray())[0].toTensor().dataAsFloatArray
                    val check = BundledProgram.check(actual, case.expectedOutputs[0].floats(), artifact.precision)
                    passed = passed && check.passed
                    lines += "case ${i + 1}: ${if (check.passed) "pass" else "FAIL"}, max |error| %.2e, top-1 %s".format(
                        check.maxAbsError, if (check.top1Agrees) "agrees" else "differs")
                }
                if (suite.cases.isEmpty()) {
                    passed = false
                    lines += "The .bpte carries no test cases; export it again with --bundled."
                }
            } finally {
                module.destroy()
            }
            return SelfCheckReport(passed, lines)
        }
    }
}
