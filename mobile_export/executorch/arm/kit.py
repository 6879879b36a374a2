"""The ARM emulation kit, built by `mobile-export setup-arm` into a cache folder from package
registries only: the executorch aarch64 wheel from PyPI (runtime headers and shared libraries,
same version as the installed executorch), Debian's aarch64 cross compiler, an arm64 sysroot of
three Debian packages (libc6, libstdc++6, libgcc-s1, unpacked with dpkg -x: no chroot, no
binfmt), QEMU >= 10 user mode (Debian 13's static qemu-aarch64: Debian 12's 7.2 mis-emulates
SME), and our runner (et_run.cpp) cross-compiled against the wheel.

`setup_arm` fetches and builds what is missing (idempotent: a second call only checks);
`find_kit` never fetches and says in one line how to get what is missing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from ...errors import ArmSetupError

HOME_ENV = "MOBILE_EXPORT_ARM_HOME"
RUNNER_ENV = "MOBILE_EXPORT_ARM_RUNNER"  # another runner binary (tests use a failing one)
QEMU_MIN = (10, 0)
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
WHEEL_PYTHON = "3.11"
CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_PACKAGE = "g++-aarch64-linux-gnu"
SYSROOT_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
QEMU_PACKAGE, QEMU_SUITE = "qemu-user", "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Linked with --no-as-needed: nothing references them by symbol, they register at load time.
REGISTERING_LIBS = (
    "executorch_backend_xnnpack",
    "executorch_kernels_optimized",
    "executorch_kernels_quantized",
)
RUNTIME_LIBS = ("executorch_threadpool", "executorch")
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_EVENT_TRACER_ENABLED", "ET_USE_THREADPOOL")
C10_INCLUDE = "executorch/runtime/core/portable_type/c10"  # the headers' own `#include <c10/...>`
RUNNER_SOURCE = Path(__file__).with_name("et_run.cpp")
STATE_FILE = "kit.json"
FIX = "run `mobile-export setup-arm`"

Log = Callable[[str], None]


@dataclass(frozen=True)
class ArmKit:
    """Paths and versions of a ready kit."""

    home: Path
    qemu: Path
    sysroot: Path
    runner: Path
    qemu_version: str
    executorch_version: str
    runner_stamp: str

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}


def arm_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "mobile-export" / "arm").expanduser()


def installed_executorch() -> str:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        raise ArmSetupError("executorch is not installed; pip install executorch, then " + FIX) from None


def qemu_version(qemu: Path) -> tuple[int, ...]:
    try:
        out = subprocess.run([str(qemu), "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError as exc:
        raise ArmSetupError(f"cannot run {qemu} ({exc.strerror}); {FIX}") from None
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ArmSetupError(f"cannot read the version of {qemu}; {FIX}")
    return tuple(int(g) for g in match.groups() if g is not None)


def runner_stamp(executorch_version: str) -> str:
    """Changes whenever the runner must be rebuilt: its source, flags or runtime version."""
    text = "\n".join(
        [RUNNER_SOURCE.read_text(), *REGISTERING_LIBS, *RUNTIME_LIBS, *DEFINES, executorch_version]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_kit(home: Path | None = None) -> ArmKit:
    """The ready kit, without fetching anything; ArmSetupError naming what is missing otherwise."""
    home = home or arm_home()
    state_path = home / STATE_FILE
    if not state_path.is_file():
        raise ArmSetupError(f"the ARM emulation kit is not set up in {home}; {FIX}")
    try:
        state = json.loads(state_path.read_text())
        kit = ArmKit(
            **{k: Path(v) if k in ("home", "qemu", "sysroot", "runner") else v for k, v in state.items()}
        )
    except (ValueError, TypeError):
        raise ArmSetupError(f"{state_path} is damaged; {FIX}") from None
    for what, path in (
        ("QEMU", kit.qemu),
        ("arm64 sysroot", kit.sysroot / "lib" / "ld-linux-aarch64.so.1"),
        ("ARM runner", kit.runner),
    ):
        if not path.exists():
            raise ArmSetupError(f"the {what} is missing ({path}); {FIX}")
    installed = installed_executorch()
    if kit.executorch_version != installed or kit.runner_stamp != runner_stamp(installed):
        raise ArmSetupError(
            f"the ARM runner was built for executorch {kit.executorch_version} (or an older "
            f"runner source) but {installed} is installed; {FIX}"
        )
    override = os.environ.get(RUNNER_ENV)
    if override:
        kit = ArmKit(**{**asdict(kit), "runner": Path(override)})
    return kit


def setup_arm(home: Path | None = None, log: Log = lambda _m: None) -> dict:
    """Fetch and build whatever the kit lacks; check versions; smoke-test the runner.
    Returns {"ready": True, "fetched": [...], "kit": {...}, "seconds": ...}."""
    t0 = time.perf_counter()
    home = home or arm_home()
    home.mkdir(parents=True, exist_ok=True)
    version = installed_executorch()
    fetched: list[str] = []
    runtime = _executorch_runtime(home, version, fetched, log)
    cxx = _cross_compiler(fetched, log)
    sysroot = _sysroot(home, fetched, log)
    qemu = _qemu(home, fetched, log)
    stamp = runner_stamp(version)
    runner = _runner(home, runtime, cxx, stamp, fetched, log)
    _smoke_test(qemu, sysroot, runner)
    kit = ArmKit(
        home=home,
        qemu=qemu,
        sysroot=sysroot,
        runner=runner,
        qemu_version=".".join(map(str, qemu_version(qemu))),
        executorch_version=version,
        runner_stamp=stamp,
    )
    _write_json(home / STATE_FILE, kit.to_dict())
    return {
        "ready": True,
        "fetched": fetched,
        "kit": kit.to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# --- the pieces -----------------------------------------------------------------------


def _executorch_runtime(home: Path, version: str, fetched: list[str], log: Log) -> Path:
    """home/executorch-VERSION/{include,lib} from the aarch64 wheel of the installed version."""
    dest = home / f"executorch-{version}"
    if (dest / "lib" / "libexecutorch.so").is_file() and (dest / "include").is_dir():
        return dest
    log(f"setup-arm: downloading the executorch {version} wheel for {WHEEL_PLATFORM} from PyPI")
    with tempfile.TemporaryDirectory(prefix="wheel-", dir=home) as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--platform",
                WHEEL_PLATFORM,
                "--python-version",
                WHEEL_PYTHON,
                "--only-binary=:all:",
                f"executorch=={version}",
                "-d",
                tmp,
            ],
            f"pip could not download executorch=={version} for {WHEEL_PLATFORM}; check access to PyPI",
        )
        wheels = list(Path(tmp).glob(f"executorch-{version}-*.whl"))
        if len(wheels) != 1:
            raise ArmSetupError(
                f"pip gave no executorch {version} wheel for {WHEEL_PLATFORM}; check access to PyPI"
            )
        staging = Path(tmp) / "runtime"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in wheel.namelist():
                if name.startswith("executorch/include/") or re.fullmatch(r"executorch/lib/[^/]+\.so", name):
                    wheel.extract(name, staging)
        if not (staging / "executorch" / "lib" / "libexecutorch.so").is_file():
            raise ArmSetupError(
                f"the executorch {version} aarch64 wheel has no lib/libexecutorch.so; "
                "this version cannot be used for ARM runs"
            )
        _replace_dir(staging / "executorch", dest)
    fetched.append(f"executorch {version} ({WHEEL_PLATFORM} wheel, PyPI)")
    return dest


def _cross_compiler(fetched: list[str], log: Log) -> str:
    found = shutil.which(CROSS_CXX)
    if found:
        return found
    fix = f"install it: apt-get install {CROSS_PACKAGE}, then mobile-export setup-arm"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ArmSetupError(f"the aarch64 cross compiler {CROSS_CXX} is missing; {fix}")
    log(f"setup-arm: apt-get install {CROSS_PACKAGE}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", CROSS_PACKAGE]
    if subprocess.run(install, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        _run(install, f"apt-get could not install {CROSS_PACKAGE}; {fix}", env=env)
    found = shutil.which(CROSS_CXX)
    if not found:
        raise ArmSetupError(f"{CROSS_PACKAGE} was installed but {CROSS_CXX} is not on PATH; {fix}")
    fetched.append(f"{CROSS_PACKAGE} (Debian)")
    return found


def _sysroot(home: Path, fetched: list[str], log: Log) -> Path:
    dest = home / "sysroot"
    if (dest / "lib" / "ld-linux-aarch64.so.1").exists():
        return dest
    suite = _host_suite()
    log(f"setup-arm: downloading arm64 {', '.join(SYSROOT_PACKAGES)} ({suite}) for the sysroot")
    with tempfile.TemporaryDirectory(prefix="sysroot-", dir=home) as tmp:
        debs = _apt_download(list(SYSROOT_PACKAGES), Path(tmp), suite=suite, arch="arm64")
        staging = Path(tmp) / "root"
        for deb in debs:
            _run(["dpkg", "-x", str(deb), str(staging)], f"dpkg -x failed on {deb.name}")
        if not (staging / "lib" / "ld-linux-aarch64.so.1").exists():
            raise ArmSetupError(
                "the arm64 libc6 package has no lib/ld-linux-aarch64.so.1; check the Debian mirror"
            )
        _replace_dir(staging, dest)
    fetched.append(f"arm64 sysroot: {', '.join(SYSROOT_PACKAGES)} (Debian {suite})")
    return dest


def _qemu(home: Path, fetched: list[str], log: Log) -> Path:
    dest = home / "qemu" / "qemu-aarch64"
    if dest.is_file() and qemu_version(dest) >= QEMU_MIN:
        return dest
    log(f"setup-arm: downloading {QEMU_PACKAGE} from Debian {QEMU_SUITE} (static qemu-aarch64 >= 10)")
    with tempfile.TemporaryDirectory(prefix="qemu-", dir=home) as tmp:
        (deb,) = _apt_download([QEMU_PACKAGE], Path(tmp), suite=QEMU_SUITE, arch=_host_arch())
        binary = _extract_one(deb, "./usr/bin/qemu-aarch64", Path(tmp) / "qemu-aarch64")
        found = qemu_version(binary)
        if found < QEMU_MIN:
            raise ArmSetupError(
                f"Debian {QEMU_SUITE} gave QEMU {'.'.join(map(str, found))}, older than "
                f"{'.'.join(map(str, QEMU_MIN))} (older ones mis-emulate SME); update QEMU_SUITE"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp_binary = dest.with_suffix(".tmp")
        shutil.copy2(binary, tmp_binary)
        os.replace(tmp_binary, dest)
    fetched.append(f"{QEMU_PACKAGE} {'.'.join(map(str, qemu_version(dest)))} (Debian {QEMU_SUITE})")
    return dest


def _runner(home: Path, runtime: Path, cxx: str, stamp: str, fetched: list[str], log: Log) -> Path:
    """home/runner/et_run with the runtime's libraries beside it (rpath $ORIGIN/lib)."""
    dest = home / "runner"
    if (dest / "et_run").is_file() and (dest / "stamp").is_file() and (dest / "stamp").read_text() == stamp:
        return dest / "et_run"
    log(f"setup-arm: building the runner ({RUNNER_SOURCE.name}) with {Path(cxx).name}")
    with tempfile.TemporaryDirectory(prefix="runner-", dir=home) as tmp:
        staging = Path(tmp) / "runner"
        (staging / "lib").mkdir(parents=True)
        cmd = [
            cxx,
            "-std=c++17",
            "-O2",
            "-Wno-deprecated-declarations",
            *(f"-D{d}" for d in DEFINES),
            f"-I{runtime / 'include'}",
            f"-I{runtime / 'include' / C10_INCLUDE}",
            str(RUNNER_SOURCE),
            "-o",
            str(staging / "et_run"),
            f"-L{runtime / 'lib'}",
            "-Wl,--no-as-needed",
            *(f"-l{lib}" for lib in REGISTERING_LIBS),
            "-Wl,--as-needed",
            *(f"-l{lib}" for lib in RUNTIME_LIBS),
            "-Wl,-rpath,$ORIGIN/lib",
        ]
        _run(cmd, "the ARM runner did not compile")
        for lib in (*REGISTERING_LIBS, *RUNTIME_LIBS):
            shutil.copy2(runtime / "lib" / f"lib{lib}.so", staging / "lib")
        (staging / "stamp").write_text(stamp)
        _replace_dir(staging, dest)
    fetched.append("runner built")
    return dest / "et_run"


def _smoke_test(qemu: Path, sysroot: Path, runner: Path) -> None:
    """The runner's usage exit (2) under QEMU proves the loader, sysroot and libraries resolve."""
    try:
        done = subprocess.run(
            [str(qemu), "-cpu", "cortex-a76", "-L", str(sysroot), str(runner)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ArmSetupError(f"the ARM runner does not start under QEMU ({exc}); {FIX}") from None
    if done.returncode != 2 or "usage" not in done.stderr:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        raise ArmSetupError(
            f"the ARM runner does not start under QEMU (exit {done.returncode}: {detail}); {FIX}"
        )


# --- helpers ---------------------------------------------------------------------------


def _apt_download(packages: list[str], dest: Path, suite: str, arch: str) -> list[Path]:
    """`apt-get download` with a throw-away apt configuration (own lists, cache and sources),
    so the host's apt state is not touched."""
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise ArmSetupError(
            "setup-arm needs apt-get and dpkg (a Debian 12+ host); install the kit by hand or use Debian"
        )
    if not DEBIAN_KEYRING.is_file():
        raise ArmSetupError(
            f"{DEBIAN_KEYRING} is missing; apt-get install debian-archive-keyring, then {FIX}"
        )
    conf = dest / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (conf / sub).mkdir(parents=True, exist_ok=True)
    (conf / "sources.list").write_text(
        f"deb [arch={arch} signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {suite} main\n"
    )
    options = {
        "Dir::Etc::sourcelist": conf / "sources.list",
        "Dir::Etc::sourceparts": conf / "parts",
        "Dir::State::Lists": conf / "lists",
        "Dir::Cache": conf / "cache",
        "APT::Architectures": arch,
        "APT::Architecture": arch,
        "Debug::NoLocking": "1",
    }
    if os.geteuid() == 0:
        options["APT::Sandbox::User"] = "root"
    args = [f"-o{k}={v}" for k, v in options.items()]
    _run(
        ["apt-get", "-q", *args, "update"],
        f"apt-get update for Debian {suite} {arch} failed; check access to {DEBIAN_MIRROR}",
    )
    debs = dest / "debs"
    debs.mkdir()
    _run(
        ["apt-get", "-q", *args, "download", *(f"{p}:{arch}" for p in packages)],
        f"apt-get download {' '.join(packages)} ({suite} {arch}) failed; check access to {DEBIAN_MIRROR}",
        cwd=debs,
    )
    found = sorted(debs.glob("*.deb"))
    if len(found) != len(packages):
        raise ArmSetupError(
            f"apt-get download gave {len(found)} of {len(packages)} packages ({', '.join(packages)})"
        )
    return found


def _extract_one(deb: Path, member: str, dest: Path) -> Path:
    """One file out of a .deb (the qemu-user package unpacks to ~465 MB; we need 17 MB of it)."""
    import tarfile

    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
            for info in tar:
                if info.name == member and info.isfile():
                    with tar.extractfile(info) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
                    dest.chmod(0o755)
                    return dest
    except tarfile.TarError:
        pass
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    raise ArmSetupError(f"{deb.name} has no {member.lstrip('./')}; check the Debian {QEMU_SUITE} mirror")


def _host_suite() -> str:
    """The host's Debian codename (the sysroot's libc must not be newer than the cross compiler's)."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        text = ""
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.MULTILINE)
    return match.group(1) if match else "bookworm"


def _host_arch() -> str:
    return (
        subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
        or "amd64"
    )


def _run(cmd: list[str], failure: str, **kwargs) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", **kwargs)
    except OSError as exc:
        raise ArmSetupError(f"{failure} ({Path(cmd[0]).name}: {exc.strerror})") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1][:200] if lines else f"exit {done.returncode}"
        raise ArmSetupError(f"{failure} ({detail})")


def _replace_dir(src: Path, dest: Path) -> None:
    """Move a finished folder into place in one rename (the old one, if any, goes first)."""
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(src, dest)


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
