"""The one reader of `docker save` streams, shared by `imagegen audit` and the image tests
(budgets, contents policy).

    read_image(ref) / read_tarball(path) -> (ImageScan, inspect, gzip mode)   one streamed pass
    apply_layers(ImageScan) -> View        the final filesystem, hidden bytes counted by inode
    GzipCounter, cache_get/cache_put       the one gzip -6 counter and its cache (by diff_id)

Modules: `tar` (forward-only tar reader), `prefetch` (read-ahead thread), `layers` (docker-archive
and OCI layouts, tar/gzip/zstd layers, per-file records), `gzsize` (parallel gzip size), `fsview`
(overlay semantics), `source` (engine or file). ELF facts come from :mod:`imagegen.elf`.
"""

from .fsview import DIR, Hidden, SymlinkLoop, View, apply_layers
from .gzsize import GzipCounter
from .layers import ImageScan, LayerScan, Rec, read_save_stream
from .source import inspect, read_image, read_tarball
from .tar import ChunkSource, CorruptStream, StreamError, TruncatedStream, UnsupportedStream

__all__ = ["DIR", "ChunkSource", "CorruptStream", "GzipCounter", "Hidden", "ImageScan", "LayerScan", "Rec",
           "StreamError", "SymlinkLoop", "TruncatedStream", "UnsupportedStream", "View", "apply_layers",
           "inspect", "read_image", "read_save_stream", "read_tarball"]
