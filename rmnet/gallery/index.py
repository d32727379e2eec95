"""FAISS indexes over L2-normalised descriptors: what kind, with which parameters, chosen by size.

Every index here uses the inner product, which on unit-norm descriptors is the cosine similarity
the project ranks by (``rmnet.eval.metrics.cosine_distance`` is ``1 - cos``). Every index carries
its own int64 ids (``add_with_ids``), so an entry keeps its id for its whole life whatever is
removed around it, and the metadata store is keyed by that id.

Kinds (``IndexSpec.kind``):

- ``flat``: exact search (``IndexFlatIP`` in an ``IndexIDMap2``). Every query reads every
  descriptor: 1 KiB per 256-d entry, so the time per query grows with the gallery.
- ``ivf-flat``, ``ivf-sq8``, ``ivf-pq``: an inverted file of ``nlist`` k-means cells; a query
  scans the ``nprobe`` cells nearest to it. The cells hold the descriptors as they are
  (``ivf-flat``, 4 bytes a dimension), scalar-quantised to 8 bits a dimension (``ivf-sq8``, 4x
  smaller, a small loss), or product-quantised to ``m`` bytes (``ivf-pq``, ``m`` sub-vectors of
  ``nbits`` each: 256-d into 64 bytes is 16x smaller, a larger loss). The cells are trained
  (k-means) on the descriptors present when the index is made; later additions go into the
  nearest cell without retraining, which is what makes adding incremental.
- ``hnsw``: a navigable small-world graph (``IndexHNSWFlat``, ``m`` links a node,
  ``ef_construction``, search breadth ``ef_search``) over the descriptors as they are. A query
  follows links from node to node and compares itself with a few thousand descriptors instead of
  a fixed fraction of the gallery, so its latency grows only slowly with the gallery. No
  training, so every add is as good as the first; but the graph costs ``2 m`` links a node on top
  of the float32 descriptor (about 1.3 KiB an entry at ``m`` 32), building it is the slowest of
  the kinds, and FAISS cannot remove from it: ``remove`` here rebuilds the graph from the
  remaining descriptors.

``auto_spec(n)`` chooses by the number of entries ``n``: exact below ``FLAT_MAX`` (where reading
every descriptor stays within a few milliseconds a query), ``hnsw`` up to ``HNSW_MAX`` (where
its memory, about 1.3 KiB an entry, and its build time, which grows a little faster than ``n``,
are still modest on one machine), ``ivf-sq8`` up to ``SQ8_MAX`` (256 bytes an entry: 10^7
entries in 2.5 GiB; it scans a fixed fraction of the gallery, so it is slower a query than
``hnsw`` for the same recall, but 5x smaller and quick to fill), ``ivf-pq`` above. ``nlist``
grows like the square root of ``n`` (cells of about a thousand entries, k-means affordable on a
CPU) and ``nprobe`` defaults to a fixed fraction of the cells (``default_nprobe``); ``ef_search``
grows like ``n ** 0.6`` (``default_ef_search``). All are in the spec, so a user
overrides any (``parse_spec("ivf-sq8:nlist=4096,nprobe=64")``, ``"hnsw:ef_search=256"``), and
``nprobe``/``ef_search`` can be changed on a built index (``set_search_params``) without
rebuilding. The benchmark (``tools/bench_gallery.py``) measures where these bounds pay off.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

KINDS = ("flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")
FLAT_MAX = 50_000          # auto: exact search below this many entries
HNSW_MAX = 2_000_000       # auto: hnsw below this many entries, ivf-sq8 from there
SQ8_MAX = 20_000_000       # auto: ivf-sq8 below this many entries, ivf-pq from there
HNSW_M = 32                # hnsw: links a node when the spec leaves m at 0
KMEANS_ITERS = 10          # k-means iterations for the IVF cells (FAISS's default is 25)
TRAIN_PER_CELL = 64        # training sample: this many descriptors a cell at most


class IndexSpecError(ValueError):
    """A bad index spec or an operation the index cannot do (the message says which)."""


def faiss_module():
    try:
        import faiss
    except ImportError as e:   # pragma: no cover - faiss-cpu is in requirements.txt
        raise IndexSpecError("the gallery needs FAISS: pip install faiss-cpu (requirements.txt)") \
            from e
    return faiss


@dataclass(frozen=True)
class IndexSpec:
    """What index to build. Parameters a kind does not use are ignored (and not stored).

    ``nlist`` 0 means: chosen from the number of entries at training time (``default_nlist``).
    ``nprobe`` 0 means: ``default_nprobe(nlist)``; ``ef_search`` 0: ``default_ef_search(n)``.
    """
    kind: str = "flat"
    nlist: int = 0
    nprobe: int = 0
    m: int = 0                 # ivf-pq: bytes (sub-quantizers) a vector; hnsw: links a node
    nbits: int = 8             # ivf-pq: bits a sub-quantizer code
    ef_construction: int = 40  # hnsw
    ef_search: int = 0         # hnsw

    def __post_init__(self):
        if self.kind not in KINDS:
            raise IndexSpecError(f"unknown index kind {self.kind!r}; one of {', '.join(KINDS)}")
        for name in ("nlist", "nprobe", "m", "ef_search"):
            if getattr(self, name) < 0:
                raise IndexSpecError(f"index {name} must be >= 0, got {getattr(self, name)}")
        if self.kind == "ivf-pq" and not 1 <= self.nbits <= 16:
            raise IndexSpecError(f"ivf-pq nbits must be in 1..16, got {self.nbits}")
        if self.kind == "hnsw" and self.ef_construction < 1:
            raise IndexSpecError("hnsw ef_construction must be >= 1")

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def to_json(self) -> dict:
        keep = {"flat": (), "ivf-flat": ("nlist", "nprobe"), "ivf-sq8": ("nlist", "nprobe"),
                "ivf-pq": ("nlist", "nprobe", "m", "nbits"),
                "hnsw": ("m", "ef_construction", "ef_search")}[self.kind]
        d = asdict(self)
        return {"kind": self.kind, **{k: d[k] for k in keep}}

    @classmethod
    def from_json(cls, d: dict) -> "IndexSpec":
        if not isinstance(d, dict) or "kind" not in d:
            raise IndexSpecError(f"an index spec needs a 'kind', got {d!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise IndexSpecError(f"unknown index parameter(s) {', '.join(sorted(unknown))}")
        try:
            return cls(**{k: (str(v) if k == "kind" else int(v)) for k, v in d.items()})
        except (TypeError, ValueError) as e:
            if isinstance(e, IndexSpecError):
                raise
            raise IndexSpecError(f"bad index spec {d!r}: {e}") from None

    def __str__(self) -> str:
        params = {k: v for k, v in self.to_json().items() if k != "kind"}
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in params.items())
                            if params else "")


def parse_spec(text: str) -> IndexSpec | None:
    """``"auto"`` -> None (choose by size); ``"KIND[:name=value,...]"`` -> an IndexSpec.

    e.g. ``flat``, ``ivf-sq8:nlist=1024,nprobe=32``, ``hnsw:m=32,ef_search=128``.
    """
    text = text.strip()
    if text == "auto":
        return None
    kind, _, rest = text.partition(":")
    params: dict[str, object] = {"kind": kind}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        name, eq, value = item.partition("=")
        if not eq:
            raise IndexSpecError(f"index spec {text!r}: expected name=value, got {item!r}")
        params[name.strip().replace("-", "_")] = value.strip()
    return IndexSpec.from_json(params)


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` entries: the power of two at or below 2 sqrt(n), at least 1, and at
    most n / 39 (FAISS wants 39 training points a cell)."""
    if n < 1:
        return 1
    nlist = 2 ** int(math.floor(math.log2(max(1.0, 2 * math.sqrt(n)))))
    return int(max(1, min(nlist, n // 39, 65536)))


def default_nprobe(nlist: int) -> int:
    """Cells scanned a query: 1/8 of them, at least 8 (or all when there are fewer): about the
    breadth that reaches recall@10 0.95 against exact search on the benchmark's descriptors
    (README, "Gallery search"); tune it for real ones with ``set_search_params``."""
    return int(min(nlist, max(8, nlist // 8)))


def default_ef_search(n: int) -> int:
    """HNSW search breadth for ``n`` entries: 48 at 10^5, growing like ``n ** 0.6`` (4x for
    10x the entries, 192 at 10^6), a multiple of 16 and at least 32: a fit to the breadth that
    reaches recall@10 0.95 against exact search on the benchmark's descriptors with ``m`` 32
    (README, "Gallery search"). Tune it for real descriptors with ``set_search_params``."""
    return int(max(32, 16 * math.ceil(3 * (max(n, 1) / 1e5) ** 0.6 - 1e-9)))


def auto_spec(n: int) -> IndexSpec:
    """The index ``auto`` chooses for ``n`` entries (module doc)."""
    if n < FLAT_MAX:
        return IndexSpec("flat")
    if n < HNSW_MAX:
        return IndexSpec("hnsw")
    if n < SQ8_MAX:
        return IndexSpec("ivf-sq8")
    return IndexSpec("ivf-pq")


def approx_spec(n: int) -> IndexSpec:
    """The approximate index ``auto`` would choose for a gallery of ``n``, even a small one
    (what ``--index approx`` evaluates)."""
    return auto_spec(max(n, FLAT_MAX))


def resolve(spec: IndexSpec, n: int, dim: int) -> IndexSpec:
    """``spec`` with its size-dependent parameters (nlist, nprobe, m) filled in for ``n``."""
    if spec.kind.startswith("ivf"):
        nlist = spec.nlist or default_nlist(n)
        nprobe = spec.nprobe or default_nprobe(nlist)
        m = spec.m
        if spec.kind == "ivf-pq":
            m = m or max(1, dim // 4)
            if dim % m:
                raise IndexSpecError(f"ivf-pq m={m} must divide the descriptor length {dim}")
        return replace(spec, nlist=nlist, nprobe=min(nprobe, nlist), m=m)
    if spec.kind == "hnsw":
        return replace(spec, m=spec.m or HNSW_M, ef_search=spec.ef_search or default_ef_search(n))
    return spec


def needs_training(spec: IndexSpec) -> bool:
    return spec.kind.startswith("ivf")


def build(spec: IndexSpec, dim: int, train: np.ndarray | None = None, seed: int = 0):
    """An empty FAISS index of ``spec`` (resolved) for ``dim``-d descriptors; IVF kinds are
    trained (k-means, seeded) on ``train``, at most TRAIN_PER_CELL x nlist rows of it."""
    faiss = faiss_module()
    ip = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if spec.kind == "hnsw":
        if not spec.m or not spec.ef_search:
            raise IndexSpecError(f"{spec}: resolve the spec (m, ef_search) before building")
        inner = faiss.IndexHNSWFlat(dim, spec.m, ip)
        inner.hnsw.efConstruction = spec.ef_construction
        inner.hnsw.efSearch = spec.ef_search
        return faiss.IndexIDMap2(inner)
    if train is None or len(train) < spec.nlist:
        have = 0 if train is None else len(train)
        raise IndexSpecError(f"{spec}: training needs at least nlist={spec.nlist} descriptors, "
                          f"got {have}")
    quantizer = faiss.IndexFlatIP(dim)
    if spec.kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, ip)
    elif spec.kind == "ivf-sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, spec.nlist,
                                              faiss.ScalarQuantizer.QT_8bit, ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, spec.nbits, ip)
    index.cp.niter = KMEANS_ITERS
    index.cp.seed = seed
    index.cp.max_points_per_centroid = TRAIN_PER_CELL
    sample = train
    limit = TRAIN_PER_CELL * spec.nlist
    if len(sample) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(sample), limit, replace=False))
        sample = sample[pick]
    index.train(np.ascontiguousarray(sample, np.float32))
    set_search_params(index, spec)
    return index


def set_search_params(index, spec: IndexSpec) -> None:
    """Apply ``spec``'s search-time parameters (nprobe, ef_search) to a built index."""
    faiss = faiss_module()
    if spec.kind.startswith("ivf"):
        faiss.extract_index_ivf(index).nprobe = int(spec.nprobe)
    elif spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(spec.ef_search)


def add(index, x: np.ndarray, ids: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(ids, np.int64))


def search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (Q, k) int64, similarities (Q, k) float32), best first; id -1 where the index found
    fewer than ``k`` (an IVF index only returns entries of the cells it scanned)."""
    if k < 1:
        raise IndexSpecError(f"k must be >= 1, got {k}")
    if index.ntotal == 0 or len(q) == 0:
        return np.full((len(q), k), -1, np.int64), np.full((len(q), k), -np.inf, np.float32)
    sims, ids = index.search(np.ascontiguousarray(q, np.float32), int(k))
    sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
    return ids.astype(np.int64), sims


def stored_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, descriptors) held exactly by a ``flat`` or ``hnsw`` index (IndexIDMap2)."""
    faiss = faiss_module()
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, index.d), np.float32)
    x = index.index.reconstruct_n(0, index.ntotal)
    return ids, np.asarray(x, np.float32)


def remove(index, spec: IndexSpec, ids: np.ndarray):
    """Remove ``ids`` from ``index``; returns the index (a new one for ``hnsw``, rebuilt)."""
    faiss = faiss_module()
    ids = np.ascontiguousarray(ids, np.int64)
    if spec.kind != "hnsw":
        index.remove_ids(faiss.IDSelectorBatch(ids))
        return index
    all_ids, x = stored_vectors(index)
    keep = ~np.isin(all_ids, ids)
    fresh = build(spec, index.d)
    if keep.any():
        add(fresh, x[keep], all_ids[keep])
    return fresh


def payload_bytes(index) -> int:
    """Bytes of the stored entries (codes + ids), the part that grows with the gallery."""
    faiss = faiss_module()
    n = int(index.ntotal)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return n * (int(ivf.code_size) + 8) + int(ivf.nlist) * int(ivf.d) * 4
    inner = faiss.downcast_index(index.index)
    total = n * (int(index.d) * 4 + 8)
    if isinstance(inner, faiss.IndexHNSW):
        g = inner.hnsw   # links (int32) of every level, each node's offset and level
        total += g.neighbors.size() * 4 + g.offsets.size() * 8 + g.levels.size() * 4
    return int(total)


@dataclass
class Built:
    """A trained, filled index with the spec it was resolved to."""
    index: object
    spec: IndexSpec
    info: dict = field(default_factory=dict)


def build_filled(spec: IndexSpec | None, x: np.ndarray, ids: np.ndarray | None = None,
                 seed: int = 0) -> Built:
    """Build (``spec`` None: ``auto_spec``) and fill an index with ``x`` (ids 0..n-1 unless
    given): what evaluation and the benchmark use."""
    x = np.ascontiguousarray(x, np.float32)
    n, dim = x.shape
    spec = resolve(spec or auto_spec(n), n, dim)
    index = build(spec, dim, x if needs_training(spec) else None, seed=seed)
    add(index, x, np.arange(n, dtype=np.int64) if ids is None else ids)
    return Built(index, spec)
