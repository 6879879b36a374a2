package org.mobileexport.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.List;
import java.util.Map;
import org.junit.Assume;
import org.junit.Test;

/**
 * A real .bpte written by executorch's Python API (-Dbpte.dir holds model.bpte and
 * expect.json): the reader must find the exact program bytes and every test tensor.
 */
public class BundledProgramTest {

    @Test
    public void readsWhatExecutorchWrote() throws Exception {
        String dir = System.getProperty("bpte.dir");
        Assume.assumeTrue("no -Dbpte.dir given", dir != null);
        byte[] bytes = Files.readAllBytes(new File(dir, "model.bpte").toPath());
        Map<String, Object> expect = Golden.object(Json.parse(
            new String(Files.readAllBytes(new File(dir, "expect.json").toPath()), StandardCharsets.UTF_8)));

        BundledProgram bp = BundledProgram.parse(bytes);
        assertEquals(expect.get("program_sha256"), ContractTest.hex(MessageDigest.getInstance("SHA-256").digest(bp.program)));
        assertEquals("ET12", new String(bp.program, 4, 4, StandardCharsets.US_ASCII));
        assertEquals(1, bp.suites.size());
        assertEquals("forward", bp.suites.get(0).methodName);
        List<Object> cases = Golden.list(expect, "cases");
        assertEquals(cases.size(), bp.suites.get(0).cases.size());
        for (int i = 0; i < cases.size(); i++) {
            Map<String, Object> c = Golden.object(cases.get(i));
            BundledProgram.TestCase tc = bp.suites.get(0).cases.get(i);
            BundledProgram.TensorValue in = tc.inputs.get(0);
            BundledProgram.TensorValue out = tc.expectedOutputs.get(0);
            assertEquals(BundledProgram.SCALAR_FLOAT, in.scalarType);
            assertArrayEquals(toInts(Golden.list(c, "input_shape")), in.sizes);
            assertArrayEquals(GoldenCasesTest.floats((String) c.get("input")), in.floats(), 0f);
            assertArrayEquals(toInts(Golden.list(c, "output_shape")), out.sizes);
            float[] expected = GoldenCasesTest.floats((String) c.get("output"));
            assertArrayEquals(expected, out.floats(), 0f);
            assertTrue(BundledProgram.check(out.floats(), expected, "fp32").passed);
        }
        System.out.println("BPTE program_bytes=" + bp.program.length + " cases=" + cases.size());
    }

    private static int[] toInts(List<Object> l) {
        int[] out = new int[l.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Double) l.get(i)).intValue();
        }
        return out;
    }
}
