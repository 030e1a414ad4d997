"""Reproducible images: the same inputs give the same image config digest, on every build path.

What makes two builds of one cell differ, and what removes it:

- **Timestamps in the layers.** Each build stage's last step clamps the mtimes of what it made to
  SOURCE_DATE_EPOCH and drops clock-dependent caches (scripts/sde.py, templates/partials/sde.j2; the
  GPU runtime's ldconfig step likewise). The runtime stage only copies those trees, and COPY keeps
  their mtimes.
- **Timestamps and build-host fields in the config.** BuildKit 0.11 and later read the
  `SOURCE_DATE_EPOCH` build argument and write `created` and every history entry's `created` from it.
  The classic builder stamps the clock, the step container's ID (`container`,
  `container_config.Hostname`), the parent step image's ID (`config.Image`) and the engine's version;
  BuildKit 0.8 (Docker 20.10's) stamps the clock. For those, `normalize` writes the config again
  (`canonical_config`) and loads it over the same layers (`dockerarchive`).
- **Labels**: `org.opencontainers.image.created` is SOURCE_DATE_EPOCH (build.stamp_labels).

SOURCE_DATE_EPOCH for a cell (`source_date_epoch`): the `SOURCE_DATE_EPOCH` environment variable when
set (reproducible-builds.org's convention), else the newest of the cell's bases' own (the Debian
archive state they were bootstrapped from: `io.imagegen.base.source-date-epoch`), else the newest
base's `created`. It comes from the inputs, never from the clock.
"""

from __future__ import annotations

import datetime as _dt
import os

from . import dockerarchive, engine
from .errors import ImagegenError, UserInputError
from .labels import BASE_PREFIX

#: container-config keys that describe the image (kept); everything else there is build-host state
CONFIG_KEYS = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels",
               "StopSignal", "Healthcheck", "OnBuild", "Shell")


def iso(epoch: int) -> str:
    """RFC 3339 UTC, seconds: "2026-07-11T10:16:37Z"."""
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: the latest SOURCE_DATE_EPOCH a tar header, a config's RFC 3339 `created` and Python's datetime all hold
MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z


def env_epoch(env: dict | None = None) -> int | None:
    """The `SOURCE_DATE_EPOCH` environment variable as seconds (None when unset or empty). Raises
    UserInputError (exit 2) for anything but ASCII digits within 0..MAX_EPOCH."""
    env = os.environ if env is None else env
    value = (env.get("SOURCE_DATE_EPOCH") or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_EPOCH:
        raise UserInputError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since 1970 up to "
                             f"{MAX_EPOCH} (https://reproducible-builds.org/specs/source-date-epoch/)")
    return int(value)


def source_date_epoch(base_refs: list[str], env: dict | None = None) -> int:
    """The cell's SOURCE_DATE_EPOCH (module docstring), in seconds. Raises UserInputError for a
    SOURCE_DATE_EPOCH that is not a non-negative integer, ImagegenError when no base says one."""
    value = env_epoch(env)
    if value is not None:
        return value
    api = engine.api()
    epochs: list[int] = []
    for ref in base_refs:
        info = api.inspect_image(ref)
        label = ((info.get("Config") or {}).get("Labels") or {}).get(f"{BASE_PREFIX}.source-date-epoch", "")
        if label.isdigit():
            epochs.append(int(label))
        elif info.get("Created"):
            epochs.append(int(_parse_created(info["Created"]).timestamp()))
    if not epochs:
        raise ImagegenError("no SOURCE_DATE_EPOCH: the bases carry none; set SOURCE_DATE_EPOCH")
    return max(epochs)


def _parse_created(text: str) -> _dt.datetime:
    """Docker's RFC 3339 with nanoseconds ("2026-12-07T12:21:11.926568489Z")."""
    head, _, rest = text.partition(".")
    if not rest:
        head = text.rstrip("Z")
    return _dt.datetime.fromisoformat(head.rstrip("Z")).replace(tzinfo=_dt.timezone.utc)


def canonical_config(config: dict, epoch: int) -> dict:
    """`config` with nothing from the build host or the clock: `created` and every history entry's at
    `epoch`, the container config cut to what describes the image (CONFIG_KEYS, empty values dropped),
    and the classic builder's `container`, `container_config` and `docker_version` gone. Layers
    (`rootfs`), platform and history text are kept."""
    created = iso(epoch)
    cfg = config.get("config") or {}
    out = {
        "architecture": config.get("architecture", "amd64"),
        "os": config.get("os", "linux"),
        "created": created,
        "config": {k: cfg[k] for k in CONFIG_KEYS if cfg.get(k) not in (None, "", [], {})},
        "rootfs": config["rootfs"],
        "history": [{"created": created, **{k: h[k] for k in ("created_by", "author", "comment", "empty_layer")
                                            if h.get(k) not in (None, "", False)}}
                    for h in config.get("history") or []],
    }
    if config.get("variant"):
        out["variant"] = config["variant"]
    return out


def needs_normalizing(image_id: str, epoch: int) -> bool:
    """Whether the built image's config carries the clock or build-host state (checked from `inspect`
    and the history API, without reading the image): a `created` other than `epoch`, a history entry
    newer than it, or the classic builder's container fields."""
    api = engine.api()
    info = api.inspect_image(image_id)
    if info.get("Created") and int(_parse_created(info["Created"]).timestamp()) != epoch:
        return True
    if info.get("Container") or (info.get("ContainerConfig") or {}).get("Hostname"):
        return True
    if (info.get("Config") or {}).get("Image") or info.get("DockerVersion"):
        return True
    for h in api.history(image_id):
        if int(h.get("Created") or 0) > epoch:
            return True
    return False


def config_from_inspect(image_id: str) -> dict | None:
    """The parts of the image's config that `canonical_config` keeps, from `inspect` and the history API
    (no read of the image): platform, container config, diff_ids, and per history entry its
    `created_by`, `comment` and whether it has a layer. The history API gives a layer's size, 0 for an
    entry without one (moby daemon/images/image_history.go); a layer can be 0 bytes too, so the answer
    is used only when exactly as many entries have a size as there are layers, else None."""
    api = engine.api()
    info = api.inspect_image(image_id)
    diff_ids = list((info.get("RootFS") or {}).get("Layers") or [])
    entries = list(reversed(api.history(image_id)))  # oldest first
    if sum(1 for h in entries if h.get("Size")) != len(diff_ids):
        return None
    config = {
        "architecture": info.get("Architecture"), "os": info.get("Os"),
        "config": info.get("Config") or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": h.get("CreatedBy") or "", "comment": h.get("Comment") or "",
                     **({} if h.get("Size") else {"empty_layer": True})} for h in entries],
    }
    if info.get("Variant"):
        config["variant"] = info["Variant"]
    return config


def normalize(image_id: str, epoch: int) -> str | None:
    """The image with `image_id`'s layers and `canonical_config`: `image_id` itself when its config needs
    nothing (`needs_normalizing`), else a new image loaded next to it (untagged; the caller removes the
    old one). The config comes from `config_from_inspect`, else from the image's save stream (read
    once); the load carries the config alone,
    since the graph-driver store has every layer (moby checks the chain ID before it reads a layer).
    None on the containerd image store when the config needs rewriting (the classic builder there): its
    load needs every layer again, which imagegen does not do; that path is reported as not reproducible.
    Raises EngineError/ImagegenError (one line)."""
    if not needs_normalizing(image_id, epoch):
        return image_id
    if engine.current().image_store != "graphdriver":
        return None
    config = config_from_inspect(image_id)
    if config is None:  # the history API left it open which entries have layers: read the config itself
        from .savestream import read_image

        config = read_image(image_id, compressed=False)[0].config
    new = canonical_config(config, epoch)
    diff_ids = new["rootfs"]["diff_ids"]
    layers = [dockerarchive.Layer(d, 0, tuple) for d in diff_ids]
    return dockerarchive.load(dockerarchive.stream(new, layers, skip=diff_ids),
                              what=f"the normalised config of {image_id[:19]}")


def check_epoch_label(labels: dict[str, str], epoch: int) -> None:
    """Raise ImagegenError when the image's `org.opencontainers.image.created` label is not `epoch`."""
    from .labels import OCI_CREATED

    if labels.get(OCI_CREATED) != iso(epoch):
        raise ImagegenError(f"{OCI_CREATED} is {labels.get(OCI_CREATED)!r}, not SOURCE_DATE_EPOCH {iso(epoch)}")
