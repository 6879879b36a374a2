"""A parity gate for an app's own CI: project limits ([tool.mobile-export]), JUnit XML,
GitHub annotations and a pytest plugin, all around the same verify_artifact.

    mobile-export verify models/*.pte models/*.mlpackage --junit parity.xml
    pytest --mobile-export models/ --junitxml parity.xml

Imports stay light here: the pytest plugin module is loaded by every pytest session of a
project that has mobile-export installed."""
