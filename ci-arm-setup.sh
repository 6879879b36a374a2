# ARM emulation kit for tests/test_arm.py (add to .ci/run before the test command).
# Fetches only from PyPI and Debian (the executorch aarch64 wheel, g++-aarch64-linux-gnu, arm64
# libc6/libstdc++6/libgcc-s1, Debian 13's static qemu-user) into ~/.cache/mobile-export/arm and
# builds our runner; a second run only checks ("ready"). Without it the ARM tests skip.
mobile-export setup-arm \
  || echo "warning: ARM emulation kit not set up; tests/test_arm.py emulation tests will skip"
