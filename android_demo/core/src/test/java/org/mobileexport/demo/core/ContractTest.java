package org.mobileexport.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/** The manifest contract, labels, JPEG reduction, the JSON reader and the .bpte reader. */
public class ContractTest {

    @Test
    public void exporterManifestParses() throws Exception {
        Map<String, Object> expect = Golden.object(Golden.index().get("manifest"));
        Manifest m = Manifest.parse(Golden.read((String) expect.get("file")));
        assertEquals(expect.get("model"), m.modelName);
        assertEquals(Golden.integer(expect, "crop"), m.preprocess.crop);
        assertEquals(Golden.integer(expect, "resize"), m.preprocess.resize);
        assertEquals(Golden.integer(expect, "labels_count"), m.labels.count);
        List<Object> files = Golden.list(expect, "artifacts");
        assertEquals(files.size(), m.artifacts.size());
        for (int i = 0; i < files.size(); i++) {
            assertEquals(files.get(i), m.artifacts.get(i).file);
        }
        Manifest.Artifact pte = m.runnable("pte");
        assertTrue("the .pte takes normalized input from the app", pte.appNormalizes());
        assertArrayEquals(new int[] {1, 3, m.preprocess.crop, m.preprocess.crop}, pte.inputShape);
        assertEquals("image", m.artifact("mlpackage").inputKind);
        assertEquals("classifier", m.artifact("mlpackage").outputKind);
        assertEquals("bpte", m.artifact("bpte").format);
    }

    @Test
    public void brokenManifestsGiveOneLineMessages() throws Exception {
        List<Object> bad = Golden.list(Golden.index(), "bad_manifests");
        assertTrue(bad.size() >= 5);
        for (Object o : bad) {
            Map<String, Object> c = Golden.object(o);
            String json = toJson(c.get("manifest"));
            try {
                Manifest.parse(json);
                fail(c.get("name") + ": parsed although it must be refused");
            } catch (ManifestException ex) {
                String msg = ex.getMessage();
                assertTrue(c.get("name") + ": '" + msg + "' lacks '" + c.get("error") + "'", msg.contains((String) c.get("error")));
                assertFalse(c.get("name") + ": message spans lines", msg.contains("\n"));
            }
        }
    }

    @Test
    public void featureModelManifestParses() throws Exception {
        Manifest m = Manifest.parse(toJson(Golden.index().get("features_manifest")));
        assertEquals("features", m.output);
        Manifest.Artifact pte = m.runnable("pte");
        assertEquals("features", pte.outputKind);
        assertNull(pte.outputShape);
    }

    @Test
    public void garbageIsAManifestErrorNotACrash() {
        for (String text : new String[] {"", "{", "[1,2]", "{\"format\": 1}", "nul", "{\"a\":1} x", "\"\\u12\""}) {
            try {
                Manifest.parse(text);
                fail("parsed: " + text);
            } catch (ManifestException ex) {
                assertFalse(ex.getMessage().isEmpty());
            }
        }
    }

    @Test
    public void missingRunnableModelIsAMessage() throws Exception {
        Manifest m = Manifest.parse(Golden.read("manifest.json"));
        try {
            m.runnable("tflite");
            fail("no .tflite is bundled");
        } catch (ManifestException ex) {
            assertTrue(ex.getMessage().contains("no .tflite model is bundled"));
        }
        assertNull(m.artifact("tflite"));
    }

    @Test
    public void labelsParseLikePython() throws Exception {
        List<String> parsed = Classification.parseLabels(Golden.read("labels.txt"));
        Map<String, Object> labels = Golden.object(Golden.index().get("labels"));
        assertEquals(Golden.list(labels, "parsed"), parsed);
        Manifest m = Manifest.parse(Golden.read("manifest.json"));
        assertEquals(m.labels.count, parsed.size());
        byte[] raw = Files.readAllBytes(new File(Golden.dir(), "labels.txt").toPath());
        assertEquals(m.labels.sha256, hex(MessageDigest.getInstance("SHA-256").digest(raw)));
    }

    @Test
    public void jpegReductionTable() throws Exception {
        for (Object o : Golden.list(Golden.index(), "jpeg_draft")) {
            Map<String, Object> r = Golden.object(o);
            assertEquals(r.toString(), Golden.integer(r, "scale"),
                Preprocessor.jpegSampleSize(Golden.integer(r, "width"), Golden.integer(r, "height"), Golden.integer(r, "resize")));
        }
    }

    @Test
    public void nonJpegDecodeIsBounded() {
        long cap = 16_000_000L;
        // Within the cap: decoded exactly, as the Python side does.
        assertEquals(1, Preprocessor.boundedSampleSize(4000, 3000, 256, cap));
        // 50 MP PNG: halved once (12.5 MP fits), shorter side 2,887 stays >= 2 x 256.
        assertEquals(2, Preprocessor.boundedSampleSize(8165, 6124, 256, cap));
        // 200 MP: quartered.
        assertEquals(4, Preprocessor.boundedSampleSize(16330, 12248, 256, cap));
        // Never below twice the resize target, even over the cap.
        assertEquals(1, Preprocessor.boundedSampleSize(20000, 1000, 256, cap));
        int s = Preprocessor.boundedSampleSize(60000, 60000, 1024, cap);
        assertTrue(60000 / s >= 2 * 1024);
        assertTrue((long) (60000 / s) * (60000 / s) <= cap || 60000 / (2 * s) < 2 * 1024);
    }

    @Test
    public void topKIsStableAndSoftmaxSumsToOne() {
        float[] logits = {1f, 3f, 3f, -2f, 10f, 10f};
        List<Classification.Prediction> top = Classification.topK(logits, "logits", 3, Arrays.asList("a", "b"));
        assertEquals(4, top.get(0).index);
        assertEquals(5, top.get(1).index);
        assertEquals(1, top.get(2).index);
        assertEquals("b", top.get(2).label);
        assertEquals("class 4", top.get(0).label);
        assertEquals(top.get(0).probability, top.get(1).probability, 0.0);
        assertEquals(1.0 / (2 + 2 * Math.exp(-7) + Math.exp(-9) + Math.exp(-12)), top.get(0).probability, 1e-12);
        double sum = 0;
        for (double p : Classification.softmax(logits)) {
            sum += p;
        }
        assertEquals(1.0, sum, 1e-12);
        List<Classification.Prediction> probs = Classification.topK(new float[] {0.1f, 0.7f, 0.2f}, "classifier", 5, null);
        assertEquals(3, probs.size());
        assertEquals(1, probs.get(0).index);
        assertEquals(0.7f, probs.get(0).probability, 1e-7);
    }

    @Test
    public void jsonReaderHandlesEscapesAndRejectsJunk() {
        Object v = Json.parse(" {\"a\": [1, -2.5e3, true, false, null], \"s\": \"q\\\"\\\\\\/\\n\\u00e9\\ud83d\\ude00\"} ");
        Map<String, Object> m = Golden.object(v);
        assertEquals(Arrays.<Object>asList(1.0, -2500.0, true, false, null), m.get("a"));
        assertEquals("q\"\\/\n\u00e9\ud83d\ude00", m.get("s"));
        for (String junk : new String[] {"[1,]", "{\"a\" 1}", "01x", "\"unterminated", "[", "{}}", "tru"}) {
            try {
                Json.parse(junk);
                fail("accepted " + junk);
            } catch (IllegalArgumentException expected) {
                assertTrue(expected.getMessage().startsWith("JSON "));
            }
        }
    }

    @Test
    public void selfCheckToleranceDependsOnPrecision() {
        float[] expected = {10f, -3f, 0.5f};
        assertTrue(BundledProgram.check(new float[] {10.002f, -3.001f, 0.5f}, expected, "fp32").passed);
        assertFalse(BundledProgram.check(new float[] {10.1f, -3f, 0.5f}, expected, "fp32").passed);
        assertTrue(BundledProgram.check(new float[] {10.3f, -2.8f, 0.6f}, expected, "int8").passed);
        BundledProgram.Check swapped = BundledProgram.check(new float[] {0f, -3f, 10f}, expected, "int8");
        assertFalse(swapped.passed);
        assertFalse(swapped.top1Agrees);
        assertFalse(BundledProgram.check(new float[] {Float.NaN, -3f, 0.5f}, expected, "fp32").passed);
        assertFalse(BundledProgram.check(new float[] {10f}, expected, "fp32").passed);
    }

    @Test
    public void damagedBundleIsAnError() {
        for (byte[] junk : new byte[][] {new byte[3], "0000XX08".getBytes(), new byte[] {8, 0, 0, 0, 'B', 'P', '0', '8', 0, 0}}) {
            try {
                BundledProgram.parse(junk);
                fail("parsed junk");
            } catch (IllegalArgumentException expected) {
                assertTrue(expected.getMessage().contains("damaged"));
            }
        }
    }

    static String hex(byte[] d) {
        StringBuilder sb = new StringBuilder();
        for (byte b : d) {
            sb.append(String.format("%02x", b & 0xFF));
        }
        return sb.toString();
    }

    /** Serializes the parsed broken manifest back to JSON text for Manifest.parse. */
    static String toJson(Object o) {
        if (o == null) {
            return "null";
        }
        if (o instanceof String) {
            StringBuilder sb = new StringBuilder("\"");
            for (char ch : ((String) o).toCharArray()) {
                if (ch == '"' || ch == '\\') {
                    sb.append('\\').append(ch);
                } else if (ch < 0x20) {
                    sb.append(String.format("\\u%04x", (int) ch));
                } else {
                    sb.append(ch);
                }
            }
            return sb.append('"').toString();
        }
        if (o instanceof Double) {
            double d = (Double) o;
            return d == Math.rint(d) && Math.abs(d) < 1e15 ? String.valueOf((long) d) : String.valueOf(d);
        }
        if (o instanceof Boolean) {
            return o.toString();
        }
        if (o instanceof List) {
            StringBuilder sb = new StringBuilder("[");
            for (Object x : (List<?>) o) {
                if (sb.length() > 1) {
                    sb.append(',');
                }
                sb.append(toJson(x));
            }
            return sb.append(']').toString();
        }
        StringBuilder sb = new StringBuilder("{");
        for (Map.Entry<String, Object> e : Golden.object(o).entrySet()) {
            if (sb.length() > 1) {
                sb.append(',');
            }
            sb.append(toJson(e.getKey())).append(':').append(toJson(e.getValue()));
        }
        return sb.append('}').toString();
    }
}
