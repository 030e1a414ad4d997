"""The BuildKit path's own logic (imagegen.buildkit), on buildx's real output: builder inspection, the
plain progress stream (steps, our scripts' one-line errors, buildx's final error), the build command,
the metadata file, the choice of path and the interrupt's clean-up of a buildx process.

The outputs below were recorded from buildx 0.13.1 (Debian 13's docker-buildx) against Debian 12's
dockerd 20.10 (embedded BuildKit 0.8) and Debian 13's dockerd 26.1.5. Runs against real engines are in
tests/engine/test_buildkit_engine.py and tests/integration/test_engines.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegen import build, buildkit, render
from imagegen.errors import UserInputError

pytestmark = pytest.mark.unit

INSPECT_20_10 = """Name:          default
Driver:        docker
Last Activity: 2026-12-07 15:58:35 +0000 UTC

Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.8+unknown
Platforms:        linux/amd64, linux/386
"""
# buildx 0.10/0.11 spelled the version line "Buildkit:"
INSPECT_OLD = """Name:   farm
Driver: remote

Nodes:
Name:      farm0
Endpoint:  tcp://buildkitd:1234
Status:    inactive
Buildkit:  v0.12.5
"""
LS_0_13 = """NAME/NODE     DRIVER/ENDPOINT   STATUS    BUILDKIT       PLATFORMS
default*      docker
 \\_ default    \\_ default       running   v0.8+unknown   linux/amd64, linux/386
farm          remote
 \\_ farm0      \\_ tcp://b:1234  inactive
"""

PLAIN_OK = """#0 building with "default" instance using docker driver

#5 [stage-1 1/2] FROM docker.io/imagegen/base-bookworm-runtime:a588cf0459d8@sha256:8e4b11f550ba
#5 DONE 0.0s

#7 [b 2/2] RUN echo hello; echo IMAGEGEN-PRUNE-REPORT '{"a": 1}'
#7 0.132 hello
#7 0.132 IMAGEGEN-PRUNE-REPORT {"a": 1}
#7 DONE 0.3s

#8 [stage-1 2/2] COPY --from=b /big /big
#8 CACHED

#9 exporting to image
#9 exporting layers 0.1s done
#9 writing image sha256:1714e7715ece75a2d60702bf431d8c6a44c8f921fae65538386a3c52f6dd0e8e done
#9 DONE 0.1s
"""
PLAIN_FAILED = """#5 [2/2] RUN echo "install: error: wheel foo-1.0 failed its sha256" && exit 3
#5 0.163 install: error: wheel foo-1.0 failed its sha256
#5 ERROR: executor failed running [/bin/sh -c echo "install: error: ..." && exit 3]: exit code: 3
------
 > [2/2] RUN echo "install: error: wheel foo-1.0 failed its sha256" && exit 3:
0.163 install: error: wheel foo-1.0 failed its sha256
------
ERROR: failed to solve: executor failed running [/bin/sh -c echo "install: error: ..." && exit 3]: exit code: 3
"""


def test_inspect_reads_the_builder_not_its_node():
    b = buildkit.parse_inspect(INSPECT_20_10)
    assert (b.name, b.driver, b.status, b.buildkit_version) == ("default", "docker", "running", "v0.8+unknown")
    old = buildkit.parse_inspect(INSPECT_OLD)
    assert (old.name, old.driver, old.status, old.buildkit_version) == ("farm", "remote", "inactive", "v0.12.5")


def test_ls_lists_builders_with_their_driver():
    assert buildkit.parse_ls(LS_0_13) == ["default (docker)", "farm (remote)"]


def _feed(text: str) -> tuple[buildkit.PlainProgress, list]:
    state = buildkit.PlainProgress()
    events = [e for e in (state.feed(line, buildkit.SCRIPT_ERROR) for line in text.splitlines()) if e]
    return state, events


def test_plain_progress_steps_and_export():
    state, events = _feed(PLAIN_OK)
    assert events[0] == ("step 1/2 FROM docker.io/imagegen/base-bookworm-runtime:a588cf0459d8@sha256:8e4b11f550ba "
                         "[stage-1]", 1, 2)
    assert events[1] == ("step 2/2 RUN echo hello; echo IMAGEGEN-PRUNE-REPORT '{\"a\": 1}' [b]", 2, 2)
    assert events[-1] == ("exporting to image", None, None)
    assert state.cached == {"8"} and state.error is None and state.script_error is None


def test_plain_progress_names_our_scripts_error_before_buildkits():
    state, _ = _feed(PLAIN_FAILED)
    assert state.script_error == "install: wheel foo-1.0 failed its sha256"
    assert state.error.startswith("failed to solve: executor failed running")


def test_prune_report_is_read_from_a_plain_log(tmp_path):
    log = tmp_path / "build.log"
    log.write_text(PLAIN_OK)
    assert build.prune_report_from_log(log) == {"a": 1}


def test_build_command_loads_one_manifest_with_metadata(tmp_path):
    path = buildkit.BuildPath("buildkit", builder="farm", driver="remote")
    argv = buildkit.command(path, tmp_path / "ctx", metadata=tmp_path / "m.json", iidfile=tmp_path / "iid",
                            no_cache=True)
    assert argv[:3] == ["docker", "buildx", "build"]
    assert argv[argv.index("--builder") + 1] == "farm"
    assert "--load" in argv and "--provenance=false" in argv and "--no-cache" in argv
    assert argv[argv.index("--progress") + 1] == "plain" and argv[-1] == str(tmp_path / "ctx")


def test_metadata_file_gives_image_id_and_config_digest(tmp_path):
    md = tmp_path / "m.json"
    md.write_text(json.dumps({"containerimage.config.digest": "sha256:" + "6d" * 32,
                              "containerimage.digest": "sha256:" + "30" * 32}))
    assert buildkit.read_metadata(md) == ("sha256:" + "30" * 32, "sha256:" + "6d" * 32)
    md.write_text("{")
    assert buildkit.read_metadata(md) == (None, None)
    assert buildkit.read_metadata(tmp_path / "absent") == (None, None)


def _docker_stub(tmp_path: Path, script: str) -> dict[str, str]:
    """A PATH whose `docker` is ``script`` (a shell body): the CLI's answers, not an engine."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "docker"
    stub.write_text("#!/bin/sh\n" + script)
    stub.chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}


NO_BUILDX = 'echo "docker: \'buildx\' is not a docker command." >&2; exit 1\n'
WITH_BUILDX = f"""case "$2" in
  version) echo "github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3";;
  inspect) if [ -z "$3" ] || [ "$3" = default ]; then cat <<'EOF'
{INSPECT_20_10}EOF
           else echo "ERROR: no builder \\"$3\\" found" >&2; exit 1; fi;;
  ls) cat <<'EOF'
{LS_0_13}EOF
;;
esac
"""


def test_choice_of_path(tmp_path, monkeypatch):
    for key in ("DOCKER_BUILDKIT", "BUILDX_BUILDER"):
        monkeypatch.delenv(key, raising=False)
    env = _docker_stub(tmp_path, WITH_BUILDX)
    monkeypatch.setenv("PATH", env["PATH"])
    path = buildkit.choose(None)
    assert (path.kind, path.builder, path.driver, path.buildkit_version, path.buildx_version) == \
        ("buildkit", "default", "docker", "v0.8+unknown", "0.13.1")
    with pytest.raises(UserInputError, match=r"no buildx builder named 'farm2'; builders here: default \(docker\), "
                                             r"farm \(remote\)"):
        buildkit.choose("farm2")
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    assert buildkit.choose(None).kind == "classic"
    with pytest.raises(UserInputError, match="DOCKER_BUILDKIT=0 selects the classic builder"):
        buildkit.choose("default")


def test_doctor_names_the_build_path(tmp_path, monkeypatch):
    from imagegen import doctor

    for key in ("DOCKER_BUILDKIT", "BUILDX_BUILDER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", _docker_stub(tmp_path, WITH_BUILDX)["PATH"])
    c = doctor.check_builder()
    assert c.status == "ok" and c.data["path"] == "buildkit" and "BuildKit v0.8+unknown" in c.detail
    monkeypatch.setenv("DOCKER_BUILDKIT", "0")
    c = doctor.check_builder()
    assert c.status == "note" and c.data["path"] == "classic" and "DOCKER_BUILDKIT=0" in c.detail


def test_without_buildx_the_classic_builder_unless_buildkit_is_asked_for(tmp_path, monkeypatch):
    for key in ("DOCKER_BUILDKIT", "BUILDX_BUILDER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", _docker_stub(tmp_path, NO_BUILDX)["PATH"])
    path = buildkit.choose(None)
    assert path.kind == "classic" and "no docker buildx plugin" in path.describe()
    with pytest.raises(UserInputError, match=r"--builder farm needs BuildKit .* engine Docker 20\.10"):
        buildkit.choose("farm", engine_version="Docker 20.10")
    monkeypatch.setenv("DOCKER_BUILDKIT", "1")
    with pytest.raises(UserInputError, match="DOCKER_BUILDKIT=1 needs BuildKit"):
        buildkit.choose(None)


def test_cancel_stops_the_process_group(tmp_path):
    """buildx gets SIGINT in its own session (it cancels the solve, then exits); a process that ignores it
    is killed after the wait."""
    polite = subprocess.Popen([sys.executable, "-c", "import time\ntry:\n time.sleep(60)\nexcept KeyboardInterrupt:"
                               "\n raise SystemExit(130)"], start_new_session=True)
    time.sleep(0.5)
    t0 = time.monotonic()
    buildkit.cancel(polite.pid, wait=10)
    assert time.monotonic() - t0 < 5
    with pytest.raises(ProcessLookupError):
        os.kill(polite.pid, 0)
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGINT, "
                                 "signal.SIG_IGN)\ntime.sleep(60)"], start_new_session=True)
    time.sleep(0.5)
    t0 = time.monotonic()
    buildkit.cancel(stubborn.pid, wait=1)
    assert 1 <= time.monotonic() - t0 < 5
    with pytest.raises(ProcessLookupError):
        os.kill(stubborn.pid, 0)


def test_tracker_value_round_trip():
    value = buildkit.tracker_value(1234, "sha256:" + "ab" * 32, 1700000000.4)
    pid, digest, started = value.split("\t")
    assert (int(pid), digest, float(started)) == (1234, "sha256:" + "ab" * 32, 1700000000.0)


def test_both_syntaxes_install_the_same_wheelhouse():
    """The committed (BuildKit) Dockerfile bind-mounts the wheelhouse; the classic form copies it and
    removes it in the install step. Nothing else differs."""
    from imagegen import matrix

    root = Path(__file__).resolve().parents[2]
    m = matrix.load(root / "matrix.yaml")
    (cell,) = m.select(["onnxruntime:1.23.2-cpu-slim"])
    bk = render.render_cell(m, cell).files["Dockerfile"]
    classic = render.render_cell(m, cell, buildkit=False).files["Dockerfile"]
    assert "RUN --mount=type=bind,source=wheels,target=/tmp/wheels" in bk and "COPY wheels/" not in bk
    assert "--mount" not in classic and "COPY wheels/ /tmp/wheels/" in classic and "rm -rf /tmp/wheels" in classic
    assert (root / "dockerfiles" / cell.id / "Dockerfile").read_text() == bk

    def instructions(text):
        return [ln.strip().removeprefix("RUN ") for ln in text.splitlines()
                if ln and not ln.startswith("#") and "wheels" not in ln]
    assert instructions(bk) == instructions(classic)
