"""Facts about the running environment, printed as one JSON line (runs INSIDE the image).

No third-party imports: slim images have no pip and maybe no `packaging`; requirement
evaluation happens on the host from the raw metadata printed here.
"""
import json
import os
import platform
import sys
import tempfile

try:
    from importlib import metadata
except ImportError:  # Python < 3.8
    metadata = None


def marker_env():
    impl = sys.implementation
    iv = "%d.%d.%d" % impl.version[:3]
    if impl.version.releaselevel != "final":
        iv += impl.version.releaselevel[0] + str(impl.version.serial)
    return {
        "implementation_name": impl.name,
        "implementation_version": iv,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def home_writable(home):
    if not home:
        return False, "HOME is not set"
    try:
        os.makedirs(os.path.join(home, ".cache"), exist_ok=True)
        fd, path = tempfile.mkstemp(dir=os.path.join(home, ".cache"))
        os.close(fd)
        os.unlink(path)
        return True, ""
    except OSError as exc:
        return False, "%s: %s" % (type(exc).__name__, exc)


def dists():
    out = []
    if metadata is None:
        return out
    for d in metadata.distributions():
        try:
            out.append({"name": d.metadata["Name"], "version": d.version, "requires": d.requires or [],
                        "path": str(getattr(d, "_path", ""))})
        except Exception as exc:  # a broken dist-info is itself a finding
            out.append({"name": "?", "version": "?", "requires": [], "error": str(exc)})
    return out


def main():
    try:
        import pwd
        name = pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        name = None
    ok, why = home_writable(os.environ.get("HOME"))
    print("IMAGEGEN-RESULT " + json.dumps({
        "uid": os.getuid(), "gid": os.getgid(), "user": name, "groups": os.getgroups(),
        "home": os.environ.get("HOME"), "home_writable": ok, "home_error": why,
        "python": platform.python_version(), "executable": sys.executable,
        "prefix": sys.prefix, "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "path": sys.path, "marker_env": marker_env(), "distributions": dists(),
    }))


if __name__ == "__main__":
    main()
