package org.mobileexport.demo.core;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Reads an ExecuTorch BundledProgram (.bpte, flatbuffer "BP08"): the program bytes and the
 * test inputs with their expected outputs. The executorch-android AAR has no bundled-program
 * API, so the app extracts the program, runs each test input through Module.forward and
 * compares with {@link #check}: the on-device self-check.
 */
public final class BundledProgram {
    /** ExecuTorch ScalarType codes (schema scalar_type.fbs) this reader decodes. */
    public static final int SCALAR_FLOAT = 6;
    public static final int SCALAR_DOUBLE = 7;
    public static final int SCALAR_LONG = 4;
    public static final int SCALAR_INT = 3;

    public final long version;
    public final byte[] program;
    public final List<TestSuite> suites;

    /** A tensor carried in the bundle. */
    public static final class TensorValue {
        public final int scalarType;
        public final int[] sizes;
        public final byte[] data;

        TensorValue(int scalarType, int[] sizes, byte[] data) {
            this.scalarType = scalarType;
            this.sizes = sizes;
            this.data = data;
        }

        public long[] shape() {
            long[] s = new long[sizes.length];
            for (int i = 0; i < s.length; i++) {
                s[i] = sizes[i];
            }
            return s;
        }

        /** The values as float32 (float and double tensors). */
        public float[] floats() {
            ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
            if (scalarType == SCALAR_FLOAT) {
                float[] out = new float[data.length / 4];
                b.asFloatBuffer().get(out);
                return out;
            }
            if (scalarType == SCALAR_DOUBLE) {
                float[] out = new float[data.length / 8];
                for (int i = 0; i < out.length; i++) {
                    out[i] = (float) b.getDouble(8 * i);
                }
                return out;
            }
            throw new IllegalStateException("tensor of scalar type " + scalarType + " is not float");
        }
    }

    public static final class TestCase {
        public final List<TensorValue> inputs;
        public final List<TensorValue> expectedOutputs;

        TestCase(List<TensorValue> inputs, List<TensorValue> expectedOutputs) {
            this.inputs = inputs;
            this.expectedOutputs = expectedOutputs;
        }
    }

    public static final class TestSuite {
        public final String methodName;
        public final List<TestCase> cases;

        TestSuite(String methodName, List<TestCase> cases) {
            this.methodName = methodName;
            this.cases = cases;
        }
    }

    /** Outcome of comparing one output with its expected values. */
    public static final class Check {
        public final boolean passed;
        public final double maxAbsError;
        public final boolean top1Agrees;

        Check(boolean passed, double maxAbsError, boolean top1Agrees) {
            this.passed = passed;
            this.maxAbsError = maxAbsError;
            this.top1Agrees = top1Agrees;
        }
    }

    private BundledProgram(long version, byte[] program, List<TestSuite> suites) {
        this.version = version;
        this.program = program;
        this.suites = suites;
    }

    /** Parses .bpte bytes; a damaged file is an IllegalArgumentException with a one-line reason. */
    public static BundledProgram parse(byte[] bytes) {
        try {
            return new Reader(bytes).root();
        } catch (IndexOutOfBoundsException | IllegalStateException ex) {
            throw new IllegalArgumentException("the .bpte file is damaged (" + ex.getMessage() + "); bundle it again");
        }
    }

    /**
     * Whether `actual` matches `expected` within |a - e| <= atol + rtol * |e| everywhere. The
     * tolerance depends on precision (facts in {@link #tolerance}); top-1 agreement is reported too.
     */
    public static Check check(float[] actual, float[] expected, String precision) {
        double[] tol = tolerance(precision);
        if (actual.length != expected.length) {
            return new Check(false, Double.POSITIVE_INFINITY, false);
        }
        double maxErr = 0.0;
        boolean ok = true;
        int aBest = 0;
        int eBest = 0;
        for (int i = 0; i < actual.length; i++) {
            double err = Math.abs((double) actual[i] - expected[i]);
            if (!(err <= tol[0] + tol[1] * Math.abs(expected[i]))) {
                ok = false;
            }
            maxErr = Math.max(maxErr, Double.isNaN(err) ? Double.POSITIVE_INFINITY : err);
            if (actual[i] > actual[aBest]) {
                aBest = i;
            }
            if (expected[i] > expected[eBest]) {
                eBest = i;
            }
        }
        boolean top1 = aBest == eBest;
        boolean quantized = "int8".equals(precision) || "mixed".equals(precision);
        return new Check(quantized ? top1 && ok : ok, maxErr, top1);
    }

    /** {atol, rtol} per precision: fp32 differs from eager only by op order; int8 by a few quantization steps. */
    static double[] tolerance(String precision) {
        if ("fp32".equals(precision)) {
            return new double[] {1e-3, 1e-3};
        }
        if ("fp16".equals(precision)) {
            return new double[] {2e-2, 2e-2};
        }
        return new double[] {0.5, 0.1};
    }

    /** Minimal flatbuffer table reader (little-endian, offsets relative to their own position). */
    private static final class Reader {
        private final ByteBuffer b;

        Reader(byte[] bytes) {
            b = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN);
            if (bytes.length < 8) {
                throw new IllegalStateException("file too short");
            }
            String id = new String(bytes, 4, 4, StandardCharsets.US_ASCII);
            if (!id.startsWith("BP")) {
                throw new IllegalStateException("not a bundled program (identifier '" + id + "')");
            }
        }

        BundledProgram root() {
            int table = deref(0);
            long version = hasField(table, 0) ? (b.getInt(fieldPos(table, 0)) & 0xFFFFFFFFL) : 0;
            List<TestSuite> suites = new ArrayList<>();
            for (int t : tables(table, 1)) {
                List<TestCase> cases = new ArrayList<>();
                for (int c : tables(t, 1)) {
                    cases.add(new TestCase(values(c, 0), values(c, 1)));
                }
                suites.add(new TestSuite(string(t, 0), Collections.unmodifiableList(cases)));
            }
            byte[] program = bytes(table, 2);
            if (program == null || program.length < 8) {
                throw new IllegalStateException("no program inside");
            }
            return new BundledProgram(version, program, Collections.unmodifiableList(suites));
        }

        private int deref(int pos) {
            return pos + b.getInt(pos);
        }

        private int vtable(int table) {
            return table - b.getInt(table);
        }

        private boolean hasField(int table, int field) {
            int vt = vtable(table);
            int vtSize = b.getShort(vt) & 0xFFFF;
            int slot = 4 + 2 * field;
            return slot < vtSize && (b.getShort(vt + slot) & 0xFFFF) != 0;
        }

        private int fieldPos(int table, int field) {
            return table + (b.getShort(vtable(table) + 4 + 2 * field) & 0xFFFF);
        }

        private int vector(int table, int field) {
            return hasField(table, field) ? deref(fieldPos(table, field)) : -1;
        }

        private List<Integer> tables(int table, int field) {
            List<Integer> out = new ArrayList<>();
            int v = vector(table, field);
            if (v < 0) {
                return out;
            }
            int n = b.getInt(v);
            for (int i = 0; i < n; i++) {
                out.add(deref(v + 4 + 4 * i));
            }
            return out;
        }

        private byte[] bytes(int table, int field) {
            int v = vector(table, field);
            if (v < 0) {
                return null;
            }
            int n = b.getInt(v);
            if (n < 0 || v + 4 + n > b.capacity()) {
                throw new IllegalStateException("vector runs past the end of the file");
            }
            byte[] out = new byte[n];
            for (int i = 0; i < n; i++) {
                out[i] = b.get(v + 4 + i);
            }
            return out;
        }

        private String string(int table, int field) {
            byte[] raw = bytes(table, field);
            return raw == null ? "" : new String(raw, StandardCharsets.UTF_8);
        }

        private List<TensorValue> values(int testCase, int field) {
            List<TensorValue> out = new ArrayList<>();
            for (int value : tables(testCase, field)) {
                // Value { val: ValueUnion } -> field 0 is the union type, field 1 the table.
                int type = hasField(value, 0) ? b.get(fieldPos(value, 0)) & 0xFF : 0;
                if (type != 1) {
                    throw new IllegalStateException("only tensor values are supported, got union type " + type);
                }
                int tensor = deref(fieldPos(value, 1));
                int scalar = hasField(tensor, 0) ? b.get(fieldPos(tensor, 0)) : 0;
                int sv = vector(tensor, 1);
                int[] sizes = new int[sv < 0 ? 0 : b.getInt(sv)];
                for (int i = 0; i < sizes.length; i++) {
                    sizes[i] = b.getInt(sv + 4 + 4 * i);
                }
                byte[] data = bytes(tensor, 2);
                out.add(new TensorValue(scalar, sizes, data == null ? new byte[0] : data));
            }
            return Collections.unmodifiableList(out);
        }
    }
}
