"""The models a server answers with: loaded versions per model name, swapped atomically on reload.

A request takes a reference to one :class:`ServedModel` when it starts and keeps it to the end, so a
reload never changes an answer in flight. A new version directory is validated, loaded and warmed up
off the event loop, then swapped in; a broken one is logged and skipped while the old one serves on.

Which versions serve (checked on every scan of the repository):

* ``latest``: the newest version that loads. A newer version that is rejected leaves the one serving
  in place; with none serving (at start, or after its directory went away) the next older version
  that loads serves instead.
* ``all`` / ``specific``: every (wanted) version that loads.
* A served version whose directory is deleted is unloaded (no version serves from memory only); under
  ``latest`` the newest older version that loads takes its place. When no version of a model is left
  loaded, the model answers NOT_FOUND and its health, and the server's, is NOT_SERVING
  (:meth:`ModelRegistry.health`).
* A rejected version is tried again when its files change, with backoff (:mod:`onnxrec.server.reload`),
  so a version copied in file by file loads once the copy is complete.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from onnxrec.errors import OnnxrecError
from onnxrec.exporter.repository import check_model_name, list_versions
from onnxrec.server.batch_policy import AdaptivePolicy, BatchPolicy, FixedDelayPolicy
from onnxrec.server.batcher import BatcherConfig
from onnxrec.server.config import ServerConfig
from onnxrec.server.limits import shown
from onnxrec.server.loaded_model import LoadedModel
from onnxrec.server.reload import Rejections, dir_signature
from onnxrec.server.served import ServedModel

log = logging.getLogger("onnxrec.server")

RETIRE_AFTER_S = 5.0  # an unloaded version keeps serving requests that already hold it this long


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of what is loaded: name -> version -> model."""

    models: dict[str, dict[int, ServedModel]]

    def names(self) -> list[str]:
        """Loaded model names, sorted."""
        return sorted(self.models)


class ModelNotFound(OnnxrecError):
    """The request names a model or version that is not loaded."""


class ModelRegistry:
    """Loads the repository's models by the version policy and keeps them current."""

    def __init__(
        self,
        config: ServerConfig,
        on_batch: Callable[[str, str, int, float], None] | None = None,
        on_change: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.config = config
        self.root = Path(config.repository)
        self.snapshot = Snapshot({})
        self.scanned = False  # the first refresh has finished (before it, a missing model may be loading)
        self._on_batch = on_batch
        self._on_change = on_change
        self._failed = Rejections()
        self._known: set[str] = set()  # models the repository holds, or held when loaded and still has a folder
        self._retiring: dict[asyncio.Task[None], ServedModel] = {}  # unloads waiting out RETIRE_AFTER_S
        self._batcher_config = BatcherConfig(
            max_batch_size=config.max_batch_size,
            max_queue_size=config.max_queue_size,
            inline_max_s=config.inline_max_us / 1e6,
        )
        delay = config.max_queue_delay_us / 1e6
        self._policy: Callable[[], BatchPolicy] = (lambda: FixedDelayPolicy(delay)) if delay else AdaptivePolicy

    def get(self, name: str, version: int = 0) -> ServedModel:
        """The model a request asked for (version 0 = latest); :class:`ModelNotFound` otherwise."""
        versions = self.snapshot.models.get(name)
        if not versions:
            loaded = ", ".join(self.snapshot.names()) or "none"
            raise ModelNotFound(f"unknown model {shown(name)} (loaded: {loaded})")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            raise ModelNotFound(
                f"model {shown(name)} has no loaded version {version} (loaded: "
                f"{', '.join(str(v) for v in sorted(versions))})"
            )
        return versions[version]

    def health(self) -> dict[str, bool]:
        """Every model the server knows, and whether it has a loaded version: the models whose folder
        holds a version, and those loaded since the start whose folder still exists."""
        loaded = self.snapshot.models
        return {name: bool(loaded.get(name)) for name in sorted(self._known | set(loaded))}

    def _scan(self) -> tuple[set[str], dict[str, list[int]]]:
        """The model folders of the repository, and each one's wanted versions, newest first."""
        if not self.root.is_dir():
            return set(), {}
        folders: set[str] = set()
        out: dict[str, list[int]] = {}
        for d in sorted(self.root.iterdir()):
            if not d.is_dir() or d.name.startswith("."):
                continue
            try:
                check_model_name(d.name)
            except OnnxrecError:
                continue
            folders.add(d.name)
            versions = list_versions(d)
            if self.config.version_policy == "specific":
                versions = [v for v in versions if v in self.config.versions]
            if versions:
                out[d.name] = versions[::-1]
        return folders, out

    def _load(self, name: str, version: int) -> ServedModel:
        model = LoadedModel(
            self.root / name / str(version),
            device=self.config.device,
            intra_op_threads=self.config.intra_op_threads,
            precision=self.config.precision,
        )
        if model.name != name or model.version != version:
            raise OnnxrecError(
                f"{self.root / name / str(version)}: manifest names {model.name} version {model.version}"
            )
        if self.config.warmup:
            model.warm_up(self.config.max_batch_size)
        return ServedModel(model, self._batcher_config, self._policy, self._on_batch)

    async def _try_load(self, name: str, version: int) -> ServedModel | None:
        """Load a version unless it was rejected and its files have not changed since (or its backoff
        is not over); a failure is recorded and logged (once per distinct reason), never raised."""
        loop = asyncio.get_running_loop()
        key = (name, version)
        signature = await loop.run_in_executor(None, dir_signature, self.root / name / str(version))
        if not self._failed.should_try(key, signature):
            return None
        if key in self._failed:
            log.info("trying %s version %d again: its files changed", name, version)
        try:
            served = await loop.run_in_executor(None, self._load, name, version)
        except Exception as exc:  # any failure to load must leave the old versions serving
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self._failed.record(key, signature, reason):
                log.error("rejected %s version %d: %s", name, version, reason)
            else:
                log.debug("rejected %s version %d again: %s", name, version, reason)
            return None
        self._failed.clear(key)
        log.info("serving %s version %d", name, version)
        return served

    async def _pick(self, name: str, versions: list[int], loaded: dict[int, ServedModel]) -> dict[int, ServedModel]:
        """The versions of ``name`` to serve, from its wanted ``versions`` (newest first) and those
        ``loaded`` now (see the module docstring)."""
        picked: dict[int, ServedModel] = {}
        for version in versions:
            served = loaded.get(version) or await self._try_load(name, version)
            if served is not None:
                picked[version] = served
                if self.config.version_policy == "latest":
                    break
        return picked

    async def refresh(self) -> bool:
        """Load what the repository has and the policy wants, drop what it no longer wants or whose
        directory is gone; swap atomically. Returns whether anything changed."""
        loop = asyncio.get_running_loop()
        folders, wanted = await loop.run_in_executor(None, self._scan)
        current = self.snapshot.models
        new: dict[str, dict[int, ServedModel]] = {}
        for name, versions in wanted.items():
            picked = await self._pick(name, versions, current.get(name, {}))
            if picked:
                new[name] = picked
        self._failed.keep_only((n, v) for n, vs in wanted.items() for v in vs)
        self._known = {n for n in self._known | set(wanted) | set(current) if n in folders}
        dropped = [(n, v, s) for n, vs in current.items() for v, s in vs.items() if new.get(n, {}).get(v) is not s]
        added = any(current.get(n, {}).get(v) is not s for n, vs in new.items() for v, s in vs.items())
        self.snapshot = Snapshot(new)
        for name, version, _ in dropped:
            if version not in wanted.get(name, []):
                left = ", ".join(f"v{v}" for v in sorted(new.get(name, {}))) or "no version: the model is unloaded"
                log.warning("%s version %d: its directory is gone; serving %s", name, version, left)
        if (dropped or added) and self._on_change:
            self._on_change(self.snapshot)
        for name, version, served in dropped:
            # requests that picked this version just before the swap may still submit to it: let them
            task = asyncio.create_task(self._retire(name, version, served))
            self._retiring[task] = served
            task.add_done_callback(lambda t: self._retiring.pop(t, None))
        self.scanned = True
        return bool(dropped or added)

    async def _retire(self, name: str, version: int, served: ServedModel) -> None:
        await asyncio.sleep(RETIRE_AFTER_S)
        log.info("unloading %s version %d", name, version)
        await served.close()

    async def watch(self, stop: asyncio.Event, after: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refresh every ``reload_interval_s`` until ``stop`` is set, awaiting ``after`` (if given)
        after each refresh (the server reports health there)."""
        interval = self.config.reload_interval_s
        if interval <= 0:
            await stop.wait()
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                await self.refresh()
                if after is not None:
                    await after()

    async def close(self) -> None:
        """Drain and stop every loaded model, and those being retired (at once, not after their wait)."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        for _, served in retiring:
            await served.close()
        for versions in self.snapshot.models.values():
            for served in versions.values():
                await served.close()
        self.snapshot = Snapshot({})
