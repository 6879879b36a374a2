package org.mobileexport.demo

import android.content.ActivityNotFoundException
import android.graphics.Bitmap
import android.net.Uri
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.enableEdgeToEdge
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.heightIn
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.DisposableEffect
import androidx.compose.runtime.LaunchedEffect
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.layout.ContentScale
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.text.font.FontWeight
import androidx.compose.ui.unit.dp
import androidx.core.content.FileProvider
import java.io.File
import java.util.concurrent.Executors
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        // targetSdk 36 forces edge-to-edge: opt in explicitly and pad the content by the
        // safe-drawing insets so the title is not drawn under the status bar.
        enableEdgeToEdge()
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(modifier = Modifier.fillMaxSize()) { DemoScreen() }
            }
        }
    }
}

/** Everything the screen shows; each field is one part of the page. */
private data class ScreenState(
    val busy: String? = "Loading the bundled model…",
    val error: String? = null,
    val bundle: ModelBundle? = null,
    val preview: Bitmap? = null,
    val outcome: Outcome? = null,
    val selfCheck: SelfCheckReport? = null,
)

@Composable
private fun DemoScreen() {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    // One worker thread owns the native module: ExecuTorch modules are not thread-safe.
    val executor = remember { Executors.newSingleThreadExecutor() }
    val worker = remember { executor.asCoroutineDispatcher() }
    var state by remember { mutableStateOf(ScreenState()) }
    var classifier by remember { mutableStateOf<Classifier?>(null) }

    DisposableEffect(Unit) {
        onDispose {
            val c = classifier
            executor.execute { c?.close() }
            executor.shutdown()
        }
    }

    LaunchedEffect(Unit) {
        state = try {
            val (bundle, loaded) = withContext(worker) {
                val b = ModelBundle.load(context)
                b to Classifier(b)
            }
            classifier = loaded
            ScreenState(busy = null, bundle = bundle)
        } catch (t: Throwable) {
            ScreenState(busy = null, error = t.screenMessage())
        }
    }

    fun run(uri: Uri) {
        val bundle = state.bundle ?: return
        val c = classifier ?: return
        state = state.copy(busy = "Classifying…", error = null)
        scope.launch {
            state = try {
                val (preview, outcome) = withContext(worker) {
                    val image = Photos.decode(context.contentResolver, uri, bundle.manifest.preprocess.resize)
                    Photos.preview(image) to c.classify(image)
                }
                state.copy(busy = null, preview = preview, outcome = outcome)
            } catch (t: Throwable) {
                state.copy(busy = null, error = t.screenMessage())
            }
        }
    }

    val picker = rememberLauncherForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) run(uri)
    }
    val cameraUri = remember {
        val dir = File(context.cacheDir, "camera").apply { mkdirs() }
        FileProvider.getUriForFile(context, "${context.packageName}.photos", File(dir, "photo.jpg"))
    }
    val camera = rememberLauncherForActivityResult(ActivityResultContracts.TakePicture()) { saved ->
        if (saved) run(cameraUri)
    }

    Column(
        modifier = Modifier.fillMaxSize().safeDrawingPadding().verticalScroll(rememberScrollState()).padding(16.dp),
        verticalArrangement = Arrangement.spacedBy(12.dp),
    ) {
        Text("MobileNet on ExecuTorch", style = MaterialTheme.typography.headlineSmall)
        state.bundle?.let { ModelCard(it) }
        state.busy?.let {
            Text(it)
            LinearProgressIndicator(modifier = Modifier.fillMaxWidth())
        }
        state.error?.let { Text(it, color = Color(0xFFB00020), fontWeight = FontWeight.Bold) }

        val ready = state.bundle != null && state.busy == null
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Button(enabled = ready, onClick = {
                picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
            }) { Text("Pick photo") }
            OutlinedButton(enabled = ready, onClick = {
                // No camera app (emulators, managed devices): launch throws from the click handler.
                try {
                    camera.launch(cameraUri)
                } catch (e: ActivityNotFoundException) {
                    state = state.copy(error = "No camera app is available on this device; pick a photo instead.")
                }
            }) { Text("Camera") }
        }
        if (state.bundle?.bundled != null) {
            OutlinedButton(enabled = ready, onClick = {
                val bundle = state.bundle ?: return@OutlinedButton
                state = state.copy(busy = "Running the self-check…", error = null)
                scope.launch {
                    state = try {
                        val report = withContext(worker) { Classifier.selfCheck(bundle) }
                        state.copy(busy = null, selfCheck = report)
                    } catch (t: Throwable) {
                        state.copy(busy = null, error = t.screenMessage())
                    }
                }
            }) { Text("Run on-device self-check (.bpte)") }
        }
        state.selfCheck?.let { SelfCheckCard(it) }
        state.preview?.let {
            Image(
                bitmap = it.asImageBitmap(),
                contentDescription = "the photo",
                contentScale = ContentScale.Fit,
                modifier = Modifier.fillMaxWidth().heightIn(max = 320.dp),
            )
        }
        state.outcome?.let { OutcomeCard(it) }
    }
}

@Composable
private fun ModelCard(bundle: ModelBundle) {
    val m = bundle.manifest
    val p = m.preprocess
    Text("${m.modelName} · ${bundle.model.file} (${bundle.model.precision})", fontWeight = FontWeight.Bold)
    Text(
        "input ${p.crop}x${p.crop}, resize ${p.resize} ${p.interpolation}, " +
            if (bundle.model.appNormalizes()) "normalized by the app" else "normalized in the model",
        style = MaterialTheme.typography.bodySmall,
    )
    if (bundle.labels == null && bundle.isClassifier) {
        Text("No labels bundled: classes are shown by number.", style = MaterialTheme.typography.bodySmall)
    }
}

@Composable
private fun OutcomeCard(outcome: Outcome) {
    Text(
        "latency: inference %.1f ms, preprocessing %.1f ms".format(outcome.inferenceMs, outcome.preprocessMs),
        fontWeight = FontWeight.Bold,
    )
    val top5 = outcome.top5
    if (top5 == null) {
        Text("feature model: output shape ${outcome.outputShape.joinToString("x")}")
        return
    }
    top5.forEachIndexed { rank, p ->
        Text("${rank + 1}. ${p.label}  ${"%.1f".format(100 * p.probability)}%")
    }
}

@Composable
private fun SelfCheckCard(report: SelfCheckReport) {
    Text(
        if (report.passed) "Self-check passed" else "Self-check FAILED",
        color = if (report.passed) Color(0xFF1B5E20) else Color(0xFFB00020),
        fontWeight = FontWeight.Bold,
    )
    report.lines.forEach { Text(it, style = MaterialTheme.typography.bodySmall) }
}
