package org.mobileexport.demo.core;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.List;
import java.util.Map;

/**
 * Where the golden vectors are: -Dgolden.dir (the Python test suite passes a folder it just
 * generated), else the committed copy beside the iOS XCTest.
 */
final class Golden {
    private static Map<String, Object> index;

    private Golden() {
    }

    static File dir() {
        String d = System.getProperty("golden.dir");
        File f = new File(d != null ? d : "../../ios_demo/DemoLogic/Tests/DemoLogicTests/Golden");
        if (!new File(f, "index.json").isFile()) {
            throw new IllegalStateException("no golden vectors at " + f.getAbsolutePath()
                + "; run `python -m mobile_export.golden DIR` and pass -Dgolden.dir=DIR");
        }
        return f;
    }

    static String read(String relative) throws Exception {
        return new String(Files.readAllBytes(new File(dir(), relative).toPath()), StandardCharsets.UTF_8);
    }

    static synchronized Map<String, Object> index() throws Exception {
        if (index == null) {
            index = object(Json.parse(read("index.json")));
        }
        return index;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> object(Object o) {
        return (Map<String, Object>) o;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Map<String, Object> m, String key) {
        return (List<Object>) m.get(key);
    }

    static int integer(Map<String, Object> m, String key) {
        return ((Double) m.get(key)).intValue();
    }
}
