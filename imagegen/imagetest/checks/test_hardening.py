"""The checks above ran in a hardened container; these prove it was (testinfra, over docker-py
exec; shell-less images get a static busybox from the read-only test mount, never the image)."""

from imagegen.imagetest.helpers import fail


def _status(host) -> dict:
    out = host.check_output("cat /proc/self/status")
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_capabilities_dropped(target, host):
    st = _status(host)
    if int(st.get("CapEff", "1").strip(), 16) or int(st.get("CapBnd", "1").strip(), 16):
        fail(target, f"test container keeps capabilities: CapEff={st.get('CapEff')} CapBnd={st.get('CapBnd')}")


def test_no_new_privileges(target, host):
    if _status(host).get("NoNewPrivs", "0").strip() != "1":
        fail(target, "test container runs without no-new-privileges")


def test_read_only_root(target, host):
    if "ro" not in host.mount_point("/").options:
        fail(target, f"root filesystem is mounted {','.join(host.mount_point('/').options)}")
    if host.run("touch /.imagegen-write-probe").rc == 0:
        fail(target, "root filesystem is writable")


def test_tmp_is_writable_tmpfs(target, host):
    mp = host.mount_point("/tmp")
    if mp.filesystem != "tmpfs":
        fail(target, f"/tmp is {mp.filesystem}, not tmpfs")
    r = host.run("echo ok > /tmp/.imagegen-probe && cat /tmp/.imagegen-probe && rm /tmp/.imagegen-probe")
    if r.rc != 0 or r.stdout.strip() != "ok":
        fail(target, f"/tmp is not writable: {r.stderr.strip()}")


def test_identity(target, host, envinfo):
    """testinfra and the image's Python agree on who runs (the image's USER)."""
    uid = int(host.check_output("id -u"))
    if uid != envinfo["uid"]:
        fail(target, f"shell sees uid {uid}, Python sees uid {envinfo['uid']}")
    if host.file(envinfo["home"]).exists is False:
        fail(target, f"HOME {envinfo['home']} does not exist")
