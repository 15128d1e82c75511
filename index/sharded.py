"""A catalog searched in shards: its tracks split by key into ``count`` shards (track ``k`` in
shard ``k % count``), each holding its slice of every layer's index (``Shard``), so that no one
process has to hold the whole catalog.

A check is fingerprinted once; every layer asks each shard what it finds among its tracks and
merges the answers as its index's own search would rank them (``index.vectors.nearest``,
``detector.landmarks.best``, ``detector.chromaprint.best``, ``detector.version.best``): a hash
or a sub-fingerprint value is as common in a shard as in the whole catalog, and a question about
one track goes to the shard that holds it. The matcher and the policy then decide on the merged
answers as on one process's, so a sharded check returns what an unsharded one returns (a test
pins it on real audio). The layers search the proxies here (``ShardedVectors`` …) as they would
search their own indexes.

Shards answer in this process (``LocalShards``) or from Ray Serve deployments (``RayShards``:
each shard held by ``replicas`` replicas, on a local Ray instance or a cluster); a proxy asks
them through a ``Fanout``, every shard at once. Serve routes around a replica that dies and
starts another; while a shard has none running, a check fails (``Unavailable``: HTTP 503) rather
than be decided without it.
"""
from __future__ import annotations

import functools
import logging
import os
import pickle
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from detector import chromaprint, landmarks, version
from detector.errors import ClearanceError, Unavailable
from index.layers import SavedLayer
from index.vectors import Candidates, IndexInfo, VectorIndex, generation_folder, nearest, published_meta, split_ids

if TYPE_CHECKING:
    from detector.version_model import VersionModel

log = logging.getLogger(__name__)


class Fanout(Protocol):
    """How a proxy asks its shards: ``every(method, *args)``: each shard's answer, in shard order;
    ``one(shard, method, *args)``: shard number ``shard``'s."""

    count: int

    def every(self, method: str, *args) -> list: ...

    def one(self, shard: int, method: str, *args): ...


class Shard:
    """Shard ``number`` of ``count``: every layer's index of the catalog's tracks in it, cut from
    the whole catalog's (``of``) or opened as a publish saved it (``open``: ``saved``); its
    methods answer the proxies' questions."""

    def __init__(self, number: int, count: int, indexes: dict[str, object], saved: bool = False):
        self.number, self.count, self.indexes, self.saved = number, count, indexes, saved

    @classmethod
    def of(cls, indexes: dict[str, object], number: int, count: int) -> "Shard":
        """Shard ``number`` of ``count`` of the catalog whose layers' indexes are ``indexes`` (by
        layer name: ``embedding``, ``chromaprint``, ``landmark``, ``version``)."""
        vectors: VectorIndex = indexes["embedding"]
        keys = np.unique(np.concatenate([split_ids(vectors.ids())[0]] +
                                        [np.asarray(indexes[n].ids, np.int64) for n in ("chromaprint", "landmark", "version")]))
        others = keys[keys % count != number].tolist()
        return cls(number, count, {"embedding": vectors.without(others),
                                   "chromaprint": indexes["chromaprint"].updated({}, others),
                                   "landmark": indexes["landmark"].shard(others),
                                   "version": indexes["version"].shard(others)})

    def save(self, folder: Path) -> None:
        """Write every layer's index of the shard into ``folder`` (``open`` reads it)."""
        self.indexes["embedding"].save_part(folder)
        for name in ("chromaprint", "landmark", "version"):
            self.indexes[name].save(folder)

    @classmethod
    def open(cls, folder: Path, number: int, count: int, root: Path, info: IndexInfo, generation: int,
             nprobe: int) -> "Shard":
        """The shard ``save`` wrote into ``folder``, of generation ``generation`` of the index at
        ``root``, read into memory: a check reads nearly every page of a shard's landmarks, and
        4 shards on 2 cores answered 1.28 checks of 30 s a second with them memory-mapped, 1.34
        read into memory."""
        return cls(number, count, {"embedding": VectorIndex.open_part(folder, root, info, generation, nprobe),
                                   "chromaprint": chromaprint.ChromaIndex.open(folder, mapped=False),
                                   "landmark": landmarks.LandmarkIndex.open(folder, mapped=False),
                                   "version": version.VersionIndex.open(folder, mapped=False)}, saved=True)

    def sizes(self) -> dict[str, int]:
        return {name: len(index) if name != "embedding" else index.size for name, index in self.indexes.items()}

    def vector_tracks(self) -> dict[int, int]:
        return self.indexes["embedding"].tracks()

    def vectors(self, queries: np.ndarray, k: int, exact: bool) -> Candidates:
        return self.indexes["embedding"].candidates(queries, k, exact)

    def landmarks(self, *args) -> list:
        return self.indexes["landmark"].ranked(*args)

    def chroma_counts(self, query: np.ndarray) -> np.ndarray:
        return self.indexes["chromaprint"].counts(query)

    def chroma(self, query: np.ndarray, max_matches: int, counts: np.ndarray) -> list:
        return self.indexes["chromaprint"].ranked(query, max_matches, counts)

    def versions(self, classes, starts: np.ndarray, query: np.ndarray) -> list:
        return self.indexes["version"].ranked(classes, starts, query)


@dataclass(frozen=True)
class ShardSource:
    """Where a replica finds its shard: the catalog's ``home``, the version of the model whose
    vectors it holds (``model``), the lists its vector search probes (``nprobe``), and how to
    open the whole catalog (``whole``: a callable, pickled). A replica unpickles and calls
    ``whole`` only where a publish saved no shards for it to open and it must cut its own:
    opening the catalog loads the fingerprint model and torch, which a replica that opens its
    saved shard never imports."""

    home: Path
    model: str
    nprobe: int
    whole: bytes

    @classmethod
    def of(cls, home: Path, model: str, nprobe: int, open_catalog: Callable[[], object]) -> "ShardSource":
        return cls(Path(home), model, nprobe, pickle.dumps(open_catalog))

    def catalog(self):
        """The whole catalog, opened now (``whole``)."""
        return pickle.loads(self.whole)()


class ShardServer:
    """What a Ray Serve replica holds: shard ``number`` of ``count`` of the catalog that
    ``source`` names, as its publish saved it (``write_shards``) or else cut from its
    published indexes (read whole while it is cut), when the replica starts and again when asked
    for a newer generation; the shard of the generation before stays for the checks that started
    with it, as the published generation before does for readers. Its questions are coroutines:
    Serve runs them one at a time on the replica's event loop, with no thread handed each (with
    threads, 4 shards on 2 cores answered 1.17 checks of 30 s a second and held 0.87-0.94 GB
    each; so, 1.28 and 0.83-0.85 GB, with the same shards memory-mapped)."""

    def __init__(self, source: ShardSource, number: int, count: int):
        self.source, self.number, self.count = source, number, count
        self.shards: dict[int, Shard] = {}
        self._load(0)           # a replica, a new one too after one died, starts with the published generation

    @functools.cached_property
    def catalog(self):
        """The whole catalog, opened the first time a shard is cut from it."""
        return self.source.catalog()

    async def load(self, generation: int) -> dict:
        return self._load(generation)

    def _load(self, generation: int) -> dict:
        """Hold the shard of the published generation (at least ``generation``); its sizes."""
        if not self.shards or max(self.shards) < generation:
            current, shard = self._saved() or self._cut()
            self.shards[current] = shard
            self.shards = {g: self.shards[g] for g in sorted(self.shards)[-2:]}
        newest = max(self.shards)
        shard = self.shards[newest]
        return {**shard.sizes(), "skimmed": shard.indexes["embedding"].skimmed, "generation": newest,
                "pid": os.getpid(), "cut": not shard.saved}

    def _saved(self) -> tuple[int, Shard] | None:
        """The published generation and this shard of it, as its publish wrote it
        (``write_shards``); None where it did not, or for another model's vectors."""
        root = self.source.home / "index"
        meta = published_meta(root)
        if meta is None or meta["model"] != self.source.model:
            return None
        folder = shard_folder(generation_folder(root, meta["generation"]), self.number, self.count)
        info = IndexInfo.published(meta)
        try:
            shard = Shard.open(folder, self.number, self.count, root, info, meta["generation"], self.source.nprobe)
        except (OSError, RuntimeError):         # none written; or a later publish removed the generation
            return None
        return (meta["generation"], shard) if shard.indexes["version"].current else None

    def _cut(self) -> tuple[int, Shard]:
        """The published generation and this shard, cut from the whole catalog's indexes (read
        whole while it is cut)."""
        from index.search import LAYERS

        catalog = self.catalog
        catalog.searcher.forget()
        current = catalog.vectors.generation
        shard = Shard.of({layer.name: layer.load(catalog) for layer in LAYERS}, self.number, self.count)
        catalog.unload()                  # the whole catalog's indexes: only the shard is kept
        return current, shard

    async def ask(self, generation: int, method: str, *args):
        if generation > max(self.shards):       # published since this replica last loaded
            self._load(generation)
        shard = self.shards.get(generation)
        if shard is None:
            raise Unavailable(f"shard {self.number} of {self.count} no longer holds generation {generation} of the "
                              f"catalog, published over twice during this check: check again")
        return getattr(shard, method)(*args)


def shard_folder(folder: Path, number: int, count: int) -> Path:
    """Where shard ``number`` of ``count`` of the generation in ``folder`` is saved."""
    return folder / f"shards-{count}" / str(number)


def write_shards(folder: Path, vectors: VectorIndex, count: int) -> None:
    """Cut the generation being published in ``folder`` (``vectors``, being saved, and every other
    layer's index as just written there) into ``count`` shards, each saved in its
    ``shard_folder``: a replica opens its shard there instead of reading the whole catalog to cut
    it. Holds the whole vector index (held already) and one shard at a time."""
    from index.search import LAYERS

    whole = {layer.name: layer.index_type.open(folder) for layer in LAYERS if isinstance(layer, SavedLayer)}
    whole["embedding"] = vectors.as_saved(folder)
    for k in range(count):
        part = shard_folder(folder, k, count)
        part.mkdir(parents=True)
        Shard.of(whole, k, count).save(part)


class RayShards:
    """``count`` shards of the catalog ``source`` names on Ray Serve: each an application
    (``apps``) of one deployment of ``replicas`` replicas (``ShardServer``), on the cluster at
    ``address`` (None: ``RAY_ADDRESS``, else a local instance of this machine's cores). Serve routes each question to a live replica
    and starts a new replica when one dies (``HEALTH_S``); a question whose replica died while
    answering is asked again. While a shard has no replica running, a check fails
    (``Unavailable``: HTTP 503) rather than wait for it or be decided without it."""

    HEALTH_S = 2.0              # Serve checks each replica this often, and replaces a dead one
    POLL_S = 1.0                # a question slower than this: is a replica of its shard still running?
    LIMIT_S = 120.0             # a shard that takes longer to answer fails the check
    QUESTIONS = 8               # questions a replica takes to answer in turn (more wait in Serve's queue)
    # its event loop runs on a thread of its own, which allocates from the main heap here
    # (``service.pool.one_malloc_arena``)
    REPLICA = {"num_cpus": 0, "runtime_env": {"env_vars": {"MALLOC_ARENA_MAX": "1"}}}

    def __init__(self, source: ShardSource, count: int, replicas: int = 1, address: str | None = None,
                 name: str = "clearance"):
        try:
            import ray
            from ray import serve
        except ImportError as exc:
            raise ClearanceError("serving shards on Ray needs Ray Serve installed: pip install 'clearance[ray]'") from exc
        # imported here: the replicas import this module, and the pipeline imports torch
        from index.pipeline import ray_address

        self.ray, self.serve, self.count = ray, serve, count
        self._warned: set[int] = set()
        if not ray.is_initialized():
            _start_ray(ray, ray_address(address))
        logging.getLogger("ray.serve").setLevel(logging.WARNING)     # its notes on starting, here
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})   # no HTTP: asked by handle
        deployment = serve.deployment(ShardServer, name="shard", num_replicas=replicas, ray_actor_options=self.REPLICA,
                                      max_ongoing_requests=self.QUESTIONS, health_check_period_s=self.HEALTH_S)
        self.apps = [f"{name}-shard-{k}-of-{count}" for k in range(count)]
        self.handles = serve.run_many([serve.api.RunTarget(deployment.bind(source, k, count), name=app,
                                                           route_prefix=None) for k, app in enumerate(self.apps)])

    def load(self, generation: int) -> list[dict]:
        """Each shard's sizes, asked of a replica that holds ``generation`` (or a newer one); the
        others load it when first asked about it. Warns, once a generation, where the replicas
        had to cut their shards: its publish saved none in their count."""
        sizes = self._answers([(k, ("load", generation)) for k in range(self.count)])
        newest = max(s["generation"] for s in sizes)
        if any(s["cut"] for s in sizes) and newest not in self._warned:
            self._warned.add(newest)
            log.warning("generation %d of the catalog was published without its %d shards: each replica cut its own "
                        "from the whole indexes, and holds the whole catalog's model and torch (about 1 GB) from now "
                        "on; publish with CLEARANCE_SERVE_SHARDS=%d (any indexing job, takedown or `clearance index "
                        "--rebuild`) to save them", newest, self.count, self.count)
        return sizes

    def pinned(self, generation: int) -> Fanout:
        """What asks the shards of ``generation``: every question of a check goes to the shards of
        the generation it started with."""
        return _Pinned(self, generation)

    def every(self, generation: int, method: str, *args) -> list:
        return self._answers([(k, ("ask", generation, method, *args)) for k in range(self.count)])

    def one(self, generation: int, shard: int, method: str, *args):
        return self._answers([(shard, ("ask", generation, method, *args))])[0]

    def running(self, shard: int) -> int:
        """Replicas of ``shard`` that Serve reports running."""
        app = self.serve.status().applications.get(self.apps[shard])
        return app.deployments["shard"].replica_states.get("RUNNING", 0) if app else 0

    def close(self) -> None:
        """Take the shards' applications down (on a cluster they outlive this process)."""
        for app in self.apps:
            self.serve.delete(app)

    def _answers(self, questions: list[tuple[int, tuple]]) -> list:
        """The answers to ``questions`` ((shard, (method, *args)) each), asked at once."""
        asked = [(k, q, self._send(k, q)) for k, q in questions]
        try:
            return [self._answer(k, q, response) for k, q, response in asked]
        except BaseException:
            for _, _, response in asked:
                response.cancel()                 # no one waits for the others' answers any more
            raise

    def _send(self, shard: int, question: tuple):
        method, *args = question
        return getattr(self.handles[shard], method).remote(*args)

    def _answer(self, shard: int, question: tuple, response):
        """The answer to ``question``, sent as ``response``: asked again where its replica died
        answering; ``Unavailable`` once its shard has no replica running or ``LIMIT_S`` passed."""
        deadline = time.monotonic() + self.LIMIT_S
        while True:
            if time.monotonic() > deadline:
                raise Unavailable(f"shard {shard} of {self.count} of the catalog did not answer within "
                                  f"{self.LIMIT_S:.0f} s")
            try:
                return response.result(timeout_s=self.POLL_S)
            except TimeoutError:
                if not self.running(shard):
                    raise Unavailable(f"shard {shard} of {self.count} of the catalog has no replica running (Ray "
                                      f"Serve is starting new ones): no check is decided without it; check again "
                                      f"in a few seconds") from None
            except self.ray.exceptions.RayTaskError as exc:        # raised by the shard
                if isinstance(exc.cause, ClearanceError):
                    raise exc.cause from None
                raise
            except self.ray.exceptions.RayActorError:              # its replica died answering: ask another
                logging.getLogger(__name__).warning("a replica of shard %d of %d died answering; asked again",
                                                    shard, self.count)
                response = self._send(shard, question)


class _Pinned:
    """``RayShards`` asking the shards of one generation."""

    def __init__(self, shards: RayShards, generation: int):
        self.shards, self.generation, self.count = shards, generation, shards.count

    def every(self, method: str, *args) -> list:
        return self.shards.every(self.generation, method, *args)

    def one(self, shard: int, method: str, *args):
        return self.shards.one(self.generation, shard, method, *args)


RAY_START_S = 60.0              # longest wait for a Ray cluster to answer, or a local instance to start


def _start_ray(ray, address: str | None) -> None:
    """Connect to the Ray cluster at ``address``, or start a local instance, from a thread that
    lives as long as this process: the processes of a local instance are killed when the thread
    that started them ends (Linux's parent-death signal follows the thread), and the service
    loads its indexes on a worker thread that ends when idle (the local instance, and every
    shard with it, died a few seconds into a load run)."""
    done, failed = threading.Event(), []

    def keep() -> None:
        try:
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                     configure_logging=True, **({} if address else {"num_cpus": os.cpu_count() or 1}))
        except BaseException as exc:          # raised again in the caller's thread
            failed.append(exc)
        finally:
            done.set()
        threading.Event().wait()

    threading.Thread(target=keep, name="clearance-ray", daemon=True).start()
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    if not done.wait(RAY_START_S):      # ray.init retries an address that takes connections but not Ray's
        raise ClearanceError(f"{where} did not answer within {RAY_START_S:.0f} s: check --ray-address (or "
                             f"CLEARANCE_RAY_ADDRESS, RAY_ADDRESS) and that `ray start --head` runs there")
    if failed:
        raise ClearanceError(f"{where} could not be reached: {failed[0]}") from failed[0]


class LocalShards:
    """Shards held in this process, asked one after the other."""

    def __init__(self, shards: list[Shard]):
        self.shards, self.count = shards, len(shards)

    def every(self, method: str, *args) -> list:
        return [getattr(s, method)(*args) for s in self.shards]

    def one(self, shard: int, method: str, *args):
        return getattr(self.shards[shard], method)(*args)


class ShardedVectors:
    """The embedding layer's index, in shards: each query's ``k`` nearest of all shards'
    candidates (``skimmed``: whether they search skims where not asked to search exactly)."""

    def __init__(self, fanout: Fanout, info: IndexInfo, size: int, skimmed: bool):
        self.fanout, self.info, self.size, self.skimmed = fanout, info, size, skimmed

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return nearest(self.fanout.every("vectors", queries, k, exact), min(k, self.size), exact or not self.skimmed)

    def tracks(self) -> dict[int, int]:
        """Vector count per track key, of every shard."""
        return {k: n for part in self.fanout.every("vector_tracks") for k, n in part.items()}


class ShardedLandmarks:
    """The landmark layer's index, in shards (``LandmarkIndex.search``'s arguments)."""

    def __init__(self, fanout: Fanout, calibration, size: int):
        self.fanout, self.calibration, self.size = fanout, calibration, size

    def __len__(self) -> int:
        return self.size

    def search(self, query: np.ndarray, max_matches: int = 5, tempo: float = 1.0, track: int | None = None,
               fan_out: int = landmarks.QUERY.fan_out, near: float | None = None) -> list[landmarks.LandmarkMatch]:
        args = (query, max_matches, tempo, track, fan_out, near)
        if track is not None:
            return landmarks.best([self.fanout.one(track % self.fanout.count, "landmarks", *args)], max_matches)
        return landmarks.best(self.fanout.every("landmarks", *args), max_matches)


class ShardedChroma:
    """The Chromaprint layer's index, in shards: a value's commonness summed over them first."""

    def __init__(self, fanout: Fanout, size: int):
        self.fanout, self.size = fanout, size

    def __len__(self) -> int:
        return self.size

    def search(self, query: np.ndarray, max_matches: int = 5) -> list[chromaprint.ChromaMatch]:
        counts = np.sum(self.fanout.every("chroma_counts", query), axis=0)
        return chromaprint.best(self.fanout.every("chroma", query, max_matches, counts), max_matches)


class ShardedVersions:
    """The version layer's index, in shards: the output's version vectors computed once."""

    def __init__(self, fanout: Fanout, model: VersionModel, size: int, current: bool = True):
        self.fanout, self.model, self.size, self.current = fanout, model, size, current

    def __len__(self) -> int:
        return self.size

    def search(self, classes) -> list[version.VersionMatch]:
        if self.size == 0 or classes.shape[1] < version.SHORTEST_S * version.CHROMA_FPS:
            return []
        return version.best(self.fanout.every("versions", classes, *self.model.vectors(classes, version.QUERY_HOP_S)))


def proxies(fanout: Fanout, sizes: list[dict[str, int]], info: IndexInfo, skimmed: bool,
            landmark_calibration, version_model: VersionModel) -> dict[str, object]:
    """What each layer searches, by name, given its shards (``fanout``) and their ``sizes``."""
    total: Callable[[str], int] = lambda name: sum(s[name] for s in sizes)
    return {"embedding": ShardedVectors(fanout, info, total("embedding"), skimmed),
            "chromaprint": ShardedChroma(fanout, total("chromaprint")),
            "landmark": ShardedLandmarks(fanout, landmark_calibration, total("landmark")),
            "version": ShardedVersions(fanout, version_model, total("version"))}


def in_process(indexes: dict[str, object], count: int) -> dict[str, object]:
    """``indexes`` (each layer's, by name) cut into ``count`` shards held in this process, and the
    proxies that search them."""
    shards = [Shard.of(indexes, k, count) for k in range(count)]
    return proxies(LocalShards(shards), [s.sizes() for s in shards], indexes["embedding"].info,
                   indexes["embedding"].skimmed, indexes["landmark"].calibration, indexes["version"].model)
