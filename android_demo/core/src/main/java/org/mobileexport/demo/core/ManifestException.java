package org.mobileexport.demo.core;

/** A manifest the app cannot use. The message is one line meant for the screen: what is wrong and the fix. */
public final class ManifestException extends Exception {
    private static final long serialVersionUID = 1L;

    public ManifestException(String message) {
        super(message);
    }
}
