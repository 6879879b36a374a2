package org.mobileexport.demo.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.Assume;
import org.junit.Test;

/**
 * What `mobile-export export --bundled` + `mobile-export bundle --app android` leave in the
 * assets folder (-Dapp.assets), read the way the app reads it: the manifest, the .pte hash, the
 * .bpte's program and cases; and the app's own preprocessing of the photos the exporter bundled
 * (raw pixels in -Dapp.photos/cases/NAME.json) must equal the .bpte's inputs within 1e-6.
 */
public class AppBundleTest {

    @Test
    public void appReadsWhatTheExporterBundled() throws Exception {
        String assets = System.getProperty("app.assets");
        Assume.assumeTrue("no -Dapp.assets given", assets != null);
        File dir = new File(assets);
        Manifest m = Manifest.parse(new String(Files.readAllBytes(new File(dir, "manifest.json").toPath()), StandardCharsets.UTF_8));
        Manifest.Artifact pte = m.runnable("pte");
        byte[] program = Files.readAllBytes(new File(dir, pte.file).toPath());
        assertEquals(pte.sha256, ContractTest.hex(MessageDigest.getInstance("SHA-256").digest(program)));
        assertEquals(pte.bytes, program.length);

        Manifest.Artifact bpteEntry = m.artifact("bpte");
        assertNotNull("the export was made with --bundled", bpteEntry);
        BundledProgram bp = BundledProgram.parse(Files.readAllBytes(new File(dir, bpteEntry.file).toPath()));
        assertEquals("ET12", new String(bp.program, 4, 4, StandardCharsets.US_ASCII));
        List<BundledProgram.TestCase> cases = bp.suites.get(0).cases;
        assertTrue(cases.size() >= 1);
        int crop = m.preprocess.crop;
        for (BundledProgram.TestCase c : cases) {
            assertArrayEquals(new int[] {1, 3, crop, crop}, c.inputs.get(0).sizes);
            assertEquals(m.numClasses, c.expectedOutputs.get(0).floats().length);
        }

        String photos = System.getProperty("app.photos");
        Assume.assumeTrue("no -Dapp.photos given", photos != null);
        Map<String, Object> index = Golden.object(Json.parse(new String(
            Files.readAllBytes(new File(photos, "index.json").toPath()), StandardCharsets.UTF_8)));
        List<Object> names = Golden.list(index, "cases");
        assertEquals(cases.size(), names.size());
        for (int i = 0; i < names.size(); i++) {
            Map<String, Object> c = Golden.object(Json.parse(new String(
                Files.readAllBytes(new File(photos, "cases/" + names.get(i) + ".json").toPath()), StandardCharsets.UTF_8)));
            Map<String, Object> image = Golden.object(c.get("image"));
            RgbImage img = GoldenCasesTest.rawImage(image).oriented(Golden.integer(image, "orientation"));
            float[] ours = Preprocessor.toTensor(img, m.preprocess, pte.appNormalizes());
            double err = GoldenCasesTest.maxAbsDiff(ours, cases.get(i).inputs.get(0).floats());
            System.out.println(String.format(Locale.ROOT, "APP %s bpte_input_max_abs=%.3e", names.get(i), err));
            assertTrue(names.get(i) + ": app preprocessing differs from the bundled input by " + err, err <= 1e-6);
        }
    }
}
