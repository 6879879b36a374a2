package org.mobileexport.demo.core;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;

/**
 * manifest.json as the app needs it (mobile_export/manifest.schema.json, versions 1 and 2; 2 adds
 * preprocess.source/assumed, which the app does not need): the model,
 * the input contract, the labels file and every artifact with its input/output contract.
 * Anything the app cannot honour becomes a {@link ManifestException} shown on screen.
 */
public final class Manifest {
    public static final String FORMAT = "mobile-export.manifest";
    public static final int VERSION = 2;
    public static final int OLDEST_VERSION = 1; // the preprocessing fields the app reads are the same in 1 and 2

    public final String modelName;
    public final String family;
    public final String output; // logits | features
    public final int resolution;
    public final int numClasses;
    public final PreprocessSpec preprocess;
    public final LabelsRef labels; // null when the export carried no labels
    public final List<Artifact> artifacts;

    /** manifest "labels": a text file with one label per line. */
    public static final class LabelsRef {
        public final String file;
        public final int count;
        public final String sha256;

        LabelsRef(String file, int count, String sha256) {
            this.file = file;
            this.count = count;
            this.sha256 = sha256;
        }
    }

    /** One exported file and the tensor contract it was exported with. */
    public static final class Artifact {
        public final String file;
        public final String target; // executorch | coreml
        public final String format; // pte | bpte | mlpackage
        public final String precision;
        public final String sha256;
        public final long bytes;
        public final String inputKind; // tensor | image
        public final int[] inputShape;
        public final String inputLayout;
        public final String inputDtype;
        public final double[] valueRange;
        public final boolean normalizedInModel;
        public final String outputKind; // logits | probabilities | classifier | features
        public final int[] outputShape; // null when unknown

        Artifact(Map<String, Object> a, String where) throws ManifestException {
            file = str(a, "file", where);
            if (file.contains("/") || file.contains("\\") || file.equals("..") || file.equals(".")) {
                throw new ManifestException(where + ": artifact name '" + file + "' is not a plain file name; re-export the model");
            }
            target = str(a, "target", where);
            format = str(a, "format", where);
            precision = str(a, "precision", where);
            sha256 = str(a, "sha256", where);
            bytes = (long) num(a, "bytes", where);
            Map<String, Object> in = obj(a, "input", where);
            String inWhere = where + " input";
            inputKind = str(in, "kind", inWhere);
            inputShape = ints(in.get("shape"), inWhere + " shape");
            inputLayout = str(in, "layout", inWhere);
            inputDtype = str(in, "dtype", inWhere);
            valueRange = doubles(in.get("value_range"), inWhere + " value_range", 2);
            normalizedInModel = bool(in, "normalized_in_model", inWhere);
            Map<String, Object> out = obj(a, "output", where);
            outputKind = str(out, "kind", where + " output");
            outputShape = out.get("shape") == null ? null : ints(out.get("shape"), where + " output shape");
        }

        /** True when the app must subtract mean and divide by std itself. */
        public boolean appNormalizes() {
            return !normalizedInModel;
        }
    }

    private Manifest(Map<String, Object> doc) throws ManifestException {
        Object format = doc.get("format");
        if (!FORMAT.equals(format)) {
            throw new ManifestException("manifest.json is not a mobile-export manifest (format " + format + "); bundle the model again with `mobile-export bundle`");
        }
        Object version = doc.get("version");
        if (!(version instanceof Double) || ((Double) version) < OLDEST_VERSION || ((Double) version) > VERSION
                || ((Double) version) != Math.rint((Double) version)) {
            throw new ManifestException("manifest version " + show(version) + " is not supported (this app reads versions " + OLDEST_VERSION + " to " + VERSION + "); update the app or export with a matching mobile-export");
        }
        Map<String, Object> model = obj(doc, "model", "manifest");
        modelName = str(model, "name", "model");
        family = str(model, "family", "model");
        output = str(model, "output", "model");
        resolution = positive(model, "resolution", "model");
        numClasses = positive(model, "num_classes", "model");

        Map<String, Object> pre = obj(doc, "preprocess", "manifest");
        String interpolation = str(pre, "interpolation", "preprocess");
        if (!Resampler.knows(interpolation)) {
            throw new ManifestException("preprocess interpolation '" + interpolation + "' is unknown to this app (it knows bilinear, bicubic, nearest); update the app");
        }
        double[] std = doubles(pre.get("std"), "preprocess std", 3);
        for (double s : std) {
            if (!(s > 0)) {
                throw new ManifestException("preprocess std must be positive, got " + s + "; re-export the model");
            }
        }
        int resize = positive(pre, "resize", "preprocess");
        int crop = positive(pre, "crop", "preprocess");
        if (crop > resize) {
            throw new ManifestException("preprocess crop " + crop + " is larger than resize " + resize + "; re-export the model");
        }
        preprocess = new PreprocessSpec(resize, crop, interpolation, doubles(pre.get("mean"), "preprocess mean", 3), std);

        Object lab = doc.get("labels");
        if (lab == null) {
            labels = null;
        } else if (lab instanceof Map) {
            @SuppressWarnings("unchecked")
            Map<String, Object> l = (Map<String, Object>) lab;
            String file = str(l, "file", "labels");
            if (file.contains("/") || file.contains("\\") || file.equals("..")) {
                throw new ManifestException("labels file '" + file + "' is not a plain file name; re-export the model");
            }
            labels = new LabelsRef(file, positive(l, "count", "labels"), str(l, "sha256", "labels"));
        } else {
            throw new ManifestException("manifest labels must be an object or null; re-export the model");
        }

        Object arts = doc.get("artifacts");
        if (!(arts instanceof List)) {
            throw new ManifestException("manifest artifacts must be a list; re-export the model");
        }
        List<Artifact> list = new ArrayList<>();
        int i = 0;
        for (Object a : (List<?>) arts) {
            if (!(a instanceof Map)) {
                throw new ManifestException("artifact " + i + " is not an object; re-export the model");
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) a;
            list.add(new Artifact(m, "artifact " + i));
            i++;
        }
        artifacts = Collections.unmodifiableList(list);
    }

    /** Parses manifest.json text; any problem is a one-line {@link ManifestException}. */
    public static Manifest parse(String json) throws ManifestException {
        Object doc;
        try {
            doc = Json.parse(json);
        } catch (IllegalArgumentException ex) {
            throw new ManifestException("manifest.json is not valid JSON (" + ex.getMessage() + "); bundle the model again");
        }
        if (!(doc instanceof Map)) {
            throw new ManifestException("manifest.json is not a JSON object; bundle the model again");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> map = (Map<String, Object>) doc;
        return new Manifest(map);
    }

    /** The first artifact of `format` (pte, bpte, mlpackage), or null. */
    public Artifact artifact(String format) {
        for (Artifact a : artifacts) {
            if (a.format.equals(format)) {
                return a;
            }
        }
        return null;
    }

    /** The artifact an app runs: its format, with a tensor input it can fill. */
    public Artifact runnable(String format) throws ManifestException {
        Artifact a = artifact(format);
        if (a == null) {
            throw new ManifestException("no ." + format + " model is bundled for " + modelName + "; run `mobile-export bundle` with one");
        }
        checkTensorInput(a);
        return a;
    }

    /**
     * The tensor contract the shared preprocessing fills: float32 NCHW 1x3xCxC, in [0, 1] when
     * the model normalizes inside, else normalized by the app (value_range is then informative).
     */
    public void checkTensorInput(Artifact a) throws ManifestException {
        if (!"tensor".equals(a.inputKind)) {
            return; // image inputs are filled by the platform (Core ML pixel buffer)
        }
        if (!"NCHW".equals(a.inputLayout) || !"float32".equals(a.inputDtype)) {
            throw new ManifestException(a.file + " takes " + a.inputDtype + " " + a.inputLayout + "; this app feeds float32 NCHW, re-export with the default input");
        }
        int[] s = a.inputShape;
        if (s.length != 4 || s[0] != 1 || s[1] != 3 || s[2] != preprocess.crop || s[3] != preprocess.crop) {
            throw new ManifestException(a.file + " expects input shape " + java.util.Arrays.toString(s) + " but the preprocess crop is " + preprocess.crop + "; re-export the model");
        }
        if (a.normalizedInModel && (a.valueRange[0] != 0.0 || a.valueRange[1] != 1.0)) {
            throw new ManifestException(a.file + " expects values in [" + a.valueRange[0] + ", " + a.valueRange[1] + "]; this app feeds [0, 1], re-export with the default input");
        }
    }

    // --- typed field access: each failure names the field -------------------------------

    private static String show(Object v) {
        if (v instanceof Double && ((Double) v) == Math.rint((Double) v)) {
            return String.valueOf(((Double) v).longValue());
        }
        return String.valueOf(v);
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> obj(Map<String, Object> m, String key, String where) throws ManifestException {
        Object v = m.get(key);
        if (!(v instanceof Map)) {
            throw new ManifestException(where + " has no '" + key + "' object; re-export the model");
        }
        return (Map<String, Object>) v;
    }

    static String str(Map<String, Object> m, String key, String where) throws ManifestException {
        Object v = m.get(key);
        if (!(v instanceof String)) {
            throw new ManifestException(where + " has no '" + key + "' text; re-export the model");
        }
        return (String) v;
    }

    static double num(Map<String, Object> m, String key, String where) throws ManifestException {
        Object v = m.get(key);
        if (!(v instanceof Double)) {
            throw new ManifestException(where + " has no '" + key + "' number; re-export the model");
        }
        return (Double) v;
    }

    static boolean bool(Map<String, Object> m, String key, String where) throws ManifestException {
        Object v = m.get(key);
        if (!(v instanceof Boolean)) {
            throw new ManifestException(where + " has no '" + key + "' true/false; re-export the model");
        }
        return (Boolean) v;
    }

    static int positive(Map<String, Object> m, String key, String where) throws ManifestException {
        double d = num(m, key, where);
        if (d != Math.rint(d) || d < 1 || d > Integer.MAX_VALUE) {
            throw new ManifestException(where + " '" + key + "' must be a positive integer, got " + d + "; re-export the model");
        }
        return (int) d;
    }

    static int[] ints(Object v, String where) throws ManifestException {
        if (!(v instanceof List)) {
            throw new ManifestException(where + " must be a list of integers; re-export the model");
        }
        List<?> l = (List<?>) v;
        int[] out = new int[l.size()];
        for (int i = 0; i < out.length; i++) {
            Object x = l.get(i);
            if (!(x instanceof Double) || (Double) x != Math.rint((Double) x)) {
                throw new ManifestException(where + " must be a list of integers; re-export the model");
            }
            out[i] = ((Double) x).intValue();
        }
        return out;
    }

    static double[] doubles(Object v, String where, int count) throws ManifestException {
        if (!(v instanceof List) || ((List<?>) v).size() != count) {
            throw new ManifestException(where + " must be a list of " + count + " numbers; re-export the model");
        }
        List<?> l = (List<?>) v;
        double[] out = new double[count];
        for (int i = 0; i < count; i++) {
            if (!(l.get(i) instanceof Double)) {
                throw new ManifestException(where + " must be a list of " + count + " numbers; re-export the model");
            }
            out[i] = (Double) l.get(i);
        }
        return out;
    }
}
