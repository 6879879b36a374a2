package org.mobileexport.demo.core;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.List;

/** Model output -> ranked predictions with labels. Pure arithmetic, shared by app and tests. */
public final class Classification {
    private Classification() {
    }

    /** One ranked class. */
    public static final class Prediction {
        public final int index;
        public final String label;
        public final double probability;

        Prediction(int index, String label, double probability) {
            this.index = index;
            this.label = label;
            this.probability = probability;
        }

        @Override
        public String toString() {
            return label + " " + String.format(java.util.Locale.ROOT, "%.1f%%", 100.0 * probability);
        }
    }

    /** Softmax in double with the maximum subtracted, so large logits do not overflow. */
    public static double[] softmax(float[] logits) {
        double max = Double.NEGATIVE_INFINITY;
        for (float v : logits) {
            max = Math.max(max, v);
        }
        double[] p = new double[logits.length];
        double total = 0.0;
        for (int i = 0; i < logits.length; i++) {
            p[i] = Math.exp(logits[i] - max);
            total += p[i];
        }
        for (int i = 0; i < p.length; i++) {
            p[i] /= total;
        }
        return p;
    }

    /**
     * The k most probable classes, highest first; equal probabilities keep the lower index
     * first (a stable sort, as numpy's argsort(kind="stable") on the negated scores).
     * `outputKind` "probabilities"/"classifier" means the model already applied softmax.
     */
    public static List<Prediction> topK(float[] output, String outputKind, int k, List<String> labels) {
        final double[] probs;
        if ("probabilities".equals(outputKind) || "classifier".equals(outputKind)) {
            probs = new double[output.length];
            for (int i = 0; i < output.length; i++) {
                probs[i] = output[i];
            }
        } else {
            probs = softmax(output);
        }
        Integer[] order = new Integer[probs.length];
        for (int i = 0; i < order.length; i++) {
            order[i] = i;
        }
        Arrays.sort(order, new Comparator<Integer>() {
            @Override
            public int compare(Integer a, Integer b) {
                int c = Double.compare(probs[b], probs[a]);
                return c != 0 ? c : Integer.compare(a, b);
            }
        });
        List<Prediction> out = new ArrayList<>();
        for (int i = 0; i < Math.min(k, order.length); i++) {
            int idx = order[i];
            out.add(new Prediction(idx, label(labels, idx), probs[idx]));
        }
        return Collections.unmodifiableList(out);
    }

    /** The label of class `index`, or "class N" when no labels were bundled. */
    public static String label(List<String> labels, int index) {
        if (labels != null && index >= 0 && index < labels.size()) {
            return labels.get(index);
        }
        return "class " + index;
    }

    /**
     * labels.txt -> one label per non-blank line, trimmed: the rule of
     * mobile_export.models.read_labels (Python's splitlines and strip), so the count matches
     * the manifest's.
     */
    public static List<String> parseLabels(String text) {
        List<String> labels = new ArrayList<>();
        int start = 0;
        int n = text.length();
        for (int i = 0; i <= n; i++) {
            boolean end = i == n;
            boolean cr = !end && text.charAt(i) == '\r';
            if (end || isLineBreak(text.charAt(i))) {
                String line = strip(text.substring(start, i));
                if (!line.isEmpty()) {
                    labels.add(line);
                }
                if (cr && i + 1 < n && text.charAt(i + 1) == '\n') {
                    i++;
                }
                start = i + 1;
            }
        }
        return Collections.unmodifiableList(labels);
    }

    /** The line boundaries of Python's str.splitlines. */
    static boolean isLineBreak(char c) {
        switch (c) {
            case '\n': case '\r': case '\u000B': case '\u000C': case '\u001C': case '\u001D': case '\u001E':
            case '\u0085': case '\u2028': case '\u2029':
                return true;
            default:
                return false;
        }
    }

    /** Python's str.isspace for the characters a label line can hold. */
    static boolean isSpace(char c) {
        return Character.isWhitespace(c) || Character.isSpaceChar(c) || c == '\u0085';
    }

    static String strip(String s) {
        int a = 0;
        int b = s.length();
        while (a < b && isSpace(s.charAt(a))) {
            a++;
        }
        while (b > a && isSpace(s.charAt(b - 1))) {
            b--;
        }
        return s.substring(a, b);
    }
}
