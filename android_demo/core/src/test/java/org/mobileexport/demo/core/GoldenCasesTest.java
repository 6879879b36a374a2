package org.mobileexport.demo.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.Test;
import org.junit.runner.RunWith;
import org.junit.runners.Parameterized;

/**
 * Every golden case the Python side made from a real photo: the same raw pixels must give the
 * same upright image (bit for bit), the same input tensor (within the index's tolerance, 1e-6)
 * and the same top 5 from the model's logits.
 */
@RunWith(Parameterized.class)
public class GoldenCasesTest {
    private final String name;

    public GoldenCasesTest(String name) {
        this.name = name;
    }

    @Parameterized.Parameters(name = "{0}")
    public static Collection<Object[]> cases() throws Exception {
        List<Object[]> out = new ArrayList<>();
        for (Object n : Golden.list(Golden.index(), "cases")) {
            out.add(new Object[] {n});
        }
        assertTrue("the golden index lists no cases", !out.isEmpty());
        return out;
    }

    private Map<String, Object> load() throws Exception {
        return Golden.object(Json.parse(Golden.read("cases/" + name + ".json")));
    }

    static float[] floats(String b64) {
        byte[] raw = Base64.getDecoder().decode(b64);
        float[] out = new float[raw.length / 4];
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    static RgbImage rawImage(Map<String, Object> image) {
        int w = Golden.integer(image, "width");
        int h = Golden.integer(image, "height");
        byte[] data = Base64.getDecoder().decode((String) image.get("data"));
        String kind = (String) image.get("kind");
        if ("gray".equals(kind)) {
            return RgbImage.fromGrayBytes(w, h, data);
        }
        if ("rgba".equals(kind)) {
            return RgbImage.fromRgbaBytes(w, h, data);
        }
        return RgbImage.fromRgbBytes(w, h, data);
    }

    static String sha256Rgb(RgbImage img) throws Exception {
        byte[] rgb = new byte[img.argb.length * 3];
        for (int i = 0; i < img.argb.length; i++) {
            rgb[3 * i] = (byte) (img.argb[i] >> 16);
            rgb[3 * i + 1] = (byte) (img.argb[i] >> 8);
            rgb[3 * i + 2] = (byte) img.argb[i];
        }
        byte[] d = MessageDigest.getInstance("SHA-256").digest(rgb);
        StringBuilder sb = new StringBuilder();
        for (byte b : d) {
            sb.append(String.format(Locale.ROOT, "%02x", b & 0xFF));
        }
        return sb.toString();
    }

    static PreprocessSpec spec(Map<String, Object> p) {
        List<Object> mean = Golden.list(p, "mean");
        List<Object> std = Golden.list(p, "std");
        double[] m = new double[3];
        double[] s = new double[3];
        for (int i = 0; i < 3; i++) {
            m[i] = (Double) mean.get(i);
            s[i] = (Double) std.get(i);
        }
        return new PreprocessSpec(Golden.integer(p, "resize"), Golden.integer(p, "crop"), (String) p.get("interpolation"), m, s);
    }

    static double maxAbsDiff(float[] a, float[] b) {
        assertEquals("tensor length", b.length, a.length);
        double max = 0;
        for (int i = 0; i < a.length; i++) {
            max = Math.max(max, Math.abs((double) a[i] - b[i]));
        }
        return max;
    }

    @Test
    public void decodedPixelsStandUprightAndOpaque() throws Exception {
        Map<String, Object> c = load();
        Map<String, Object> image = Golden.object(c.get("image"));
        RgbImage img = rawImage(image).oriented(Golden.integer(image, "orientation")).overWhite();
        Map<String, Object> decoded = Golden.object(c.get("decoded"));
        assertEquals("width after orientation", Golden.integer(decoded, "width"), img.width);
        assertEquals("height after orientation", Golden.integer(decoded, "height"), img.height);
        assertEquals("decoded RGB bytes", decoded.get("sha256"), sha256Rgb(img));
    }

    @Test
    public void inputTensorMatchesPython() throws Exception {
        Map<String, Object> c = load();
        Map<String, Object> image = Golden.object(c.get("image"));
        RgbImage img = rawImage(image).oriented(Golden.integer(image, "orientation"));
        PreprocessSpec spec = spec(Golden.object(c.get("preprocess")));
        double tol = (Double) Golden.index().get("tolerance");
        double unit = maxAbsDiff(Preprocessor.toTensor(img, spec, false), floats((String) c.get("unit")));
        double norm = maxAbsDiff(Preprocessor.toTensor(img, spec, true), floats((String) c.get("normalized")));
        System.out.println(String.format(Locale.ROOT, "GOLDEN %s unit_max_abs=%.3e normalized_max_abs=%.3e", name, unit, norm));
        assertTrue(name + ": [0,1] tensor differs by " + unit, unit <= tol);
        assertTrue(name + ": normalized tensor differs by " + norm, norm <= tol);
    }

    @Test
    public void jpegDecodeReductionMatchesDraft() throws Exception {
        Object jpeg = load().get("jpeg");
        if (jpeg == null) {
            return; // not a JPEG: no reduction applies
        }
        Map<String, Object> j = Golden.object(jpeg);
        Map<String, Object> p = Golden.object(load().get("preprocess"));
        int scale = Preprocessor.jpegSampleSize(Golden.integer(j, "raw_width"), Golden.integer(j, "raw_height"), Golden.integer(p, "resize"));
        assertEquals(Golden.integer(j, "scale"), scale);
    }

    @Test
    public void top5MatchesPython() throws Exception {
        Map<String, Object> c = load();
        if (c.get("top5") == null) {
            return; // too small for the model; the tensor test covers it
        }
        List<String> labels = Classification.parseLabels(Golden.read("labels.txt"));
        List<Classification.Prediction> top = Classification.topK(floats((String) c.get("logits")), (String) c.get("output_kind"), 5, labels);
        List<Object> expected = Golden.list(c, "top5");
        assertEquals(expected.size(), top.size());
        for (int i = 0; i < top.size(); i++) {
            Map<String, Object> e = Golden.object(expected.get(i));
            assertEquals(name + " rank " + i + " index", Golden.integer(e, "index"), top.get(i).index);
            assertEquals(name + " rank " + i + " label", e.get("label"), top.get(i).label);
            assertEquals(name + " rank " + i + " probability", (Double) e.get("probability"), top.get(i).probability, 1e-12);
        }
        System.out.println("GOLDEN " + name + " top5_ok " + top.get(0).index);
    }

    @Test
    public void preprocessOfTheCaseIsReadable() throws Exception {
        assertNotNull(spec(Golden.object(load().get("preprocess"))).interpolation);
    }
}
