"""build.late_commits against a scripted image list: the engine's `GET /images/json?all=1` answers
as the classic builder produces them after an interrupt (a late COPY commit, then the metadata steps
it still ran). The real engine's case: tests/integration/test_build_cells.py's Ctrl-C tests."""

from __future__ import annotations

import time

import pytest

from imagegen import build

pytestmark = pytest.mark.unit

START = time.time()


def img(i: str, parent: str, tags=None, created=None) -> dict:
    return {"Id": f"sha256:{i * 64}"[:71], "ParentId": f"sha256:{parent * 64}"[:71] if parent else "",
            "RepoTags": tags, "Created": int(created if created is not None else START + 5)}


class ScriptedAPI:
    """Answers images(all=True) with the list the timeline holds at that moment (seconds since the
    first call)."""

    def __init__(self, timeline: list[tuple[float, list[dict]]]):
        self.timeline = timeline
        self.t0: float | None = None
        self.calls = 0

    def images(self, all=False):
        self.calls += 1
        now = time.monotonic()
        self.t0 = self.t0 if self.t0 is not None else now
        current: list[dict] = []
        for at, images in self.timeline:
            if now - self.t0 >= at:
                current = images
        return current


def run(monkeypatch, timeline, inflight_kind="COPY", **kw):
    api = ScriptedAPI(timeline)
    monkeypatch.setattr(build.engine, "api", lambda: api)
    record = build.inflight_value("a" * 12, f"{inflight_kind} --from=builder /opt/venv /opt/venv", START)
    return build.late_commits([record], poll=0.05, **kw), api


def short(ids):
    return [i.replace("sha256:", "")[0] for i in ids]


def test_children_committed_after_the_late_commit_are_found_children_first(monkeypatch):
    base = [img("a", "")]
    copy = img("b", "a")
    env, workdir, user = img("c", "b"), img("d", "c"), img("e", "d")
    timeline = [(0, base), (0.3, base + [copy]), (0.5, base + [copy, env]),
                (0.7, base + [copy, env, workdir]), (1.0, base + [copy, env, workdir, user])]
    found, _ = run(monkeypatch, timeline, settle=0.6)
    assert short(found) == ["e", "d", "c", "b"]


def test_tagged_or_older_images_are_never_late_commits(monkeypatch):
    monkeypatch.setitem(build.LATE_COMMIT_WAIT, "RUN", 0.3)
    base = [img("a", ""), img("t", "a", tags=["user/thing:1"]), img("o", "a", created=START - 3600)]
    found, _ = run(monkeypatch, [(0, base)], inflight_kind="RUN", settle=0.2)
    assert found == []


def test_a_run_step_waits_briefly_and_a_quiet_list_ends_the_search(monkeypatch):
    monkeypatch.setitem(build.LATE_COMMIT_WAIT, "RUN", 0.3)
    t = time.monotonic()
    found, _ = run(monkeypatch, [(0, [img("a", "")])], inflight_kind="RUN", settle=0.2)
    assert found == [] and time.monotonic() - t < 2


def test_an_unreachable_engine_returns_what_was_found(monkeypatch):
    import docker

    class Gone:
        calls = 0

        def images(self, all=False):
            self.calls += 1
            if self.calls > 2:
                raise docker.errors.APIError("engine gone")
            return [img("a", ""), img("b", "a")]

    monkeypatch.setattr(build.engine, "api", lambda: Gone())
    record = build.inflight_value("a" * 12, "COPY x y", START)
    assert short(build.late_commits([record], poll=0.01, settle=5)) == ["b"]
