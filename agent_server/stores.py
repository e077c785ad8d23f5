"""The store: LangGraph's long-term memory, one for the API and every graph.

The store is chosen like the checkpointer (``AGENT_SERVER_DATABASE_URL``), and it is
LangGraph's own class for each backend:

- ``memory://``: ``InMemoryStore`` (with item TTLs added: :class:`MemoryStore`).
- SQLite: ``AsyncSqliteStore``, in the checkpoint file, on a connection of its own.
- PostgreSQL: ``AsyncPostgresStore`` on the saver's pool, every call under its
  :class:`~agent_server.storage.StorageRetry` (:class:`RetryingPostgresStore`); its
  tables are created under the start-up advisory lock.

Every graph gets it (:mod:`agent_server.graphs`), so ``get_store()`` and a node's
``store`` argument reach what ``/langgraph/store/...`` serves, and the reverse.

Semantic search (``AGENT_SERVER_STORE_EMBEDDINGS``): ``hashing`` (the default: offline,
deterministic, lexical: each word hashed into one of 256 dimensions, for tests and
demos), ``openai:<model>`` (langchain-openai, as the chat model), or ``none``. The
vectors go where LangGraph's store keeps them when it can: pgvector in PostgreSQL,
sqlite-vec in SQLite. Decisions:

- Where that extension is missing (PostgreSQL without pgvector, a Python whose sqlite3
  cannot load extensions), the store falls back to :class:`RankedStore`: the library's
  store without an index, plus a table of vectors (``agent_server_store_vectors``)
  ranked in Python: a search with a ``query`` reads the items under the prefix that
  pass the filter (at most :data:`RANK_CANDIDATES`), scores each by its best cosine
  similarity and returns one page. Same results, linear cost: fine for thousands of
  items per namespace prefix, not for millions (install pgvector). The start-up log
  says which is used.
- Expired items are deleted by a supervised lifespan job calling ``sweep_ttl()`` every
  ``AGENT_SERVER_TTL_SWEEP_INTERVAL`` seconds (not the store's own unsupervised
  sweeper); PostgreSQL and SQLite also omit expired items from reads before then.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import logging
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    get_text_at_path,
    tokenize_path,
)
from langgraph.store.base.batch import AsyncBatchedBaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.postgres.aio import AsyncPostgresStore

from agent_server.settings import Settings
from agent_server.sql import Database, PostgresDatabase, SqliteDatabase, setup_lock

logger = logging.getLogger("agent_server.stores")

HASHING_DIMS = 256
KNOWN_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
RANK_CANDIDATES = 10_000
WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbeddings(Embeddings):
    """Offline, deterministic embeddings: each lower-cased word is hashed to a dimension
    and a sign, and the vector is normalised. Texts that share words are close; nothing
    is learned, so "car" is not near "automobile". For tests and demos."""

    def __init__(self, dims: int = HASHING_DIMS) -> None:
        self.dims = dims

    def _embed(self, text: str) -> list[float]:
        vector = [0.0] * self.dims
        for word in WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            number = int.from_bytes(digest, "big")
            vector[number % self.dims] += 1.0 if number >> 63 else -1.0
        norm = math.sqrt(sum(v * v for v in vector))
        if norm == 0:
            vector[0], norm = 1.0, 1.0  # an empty text: a fixed direction, never zero
        return [v / norm for v in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._embed(text)


def load_embeddings(settings: Settings) -> tuple[Embeddings, int] | None:
    """The configured embeddings model and its size, or ``None`` for no index."""
    spec = settings.store_embeddings
    if spec == "none":
        return None
    if spec == "hashing":
        dims = settings.store_embedding_dims or HASHING_DIMS
        return HashingEmbeddings(dims), dims
    provider, _, model = spec.partition(":")
    if provider != "openai" or not model:
        raise ValueError(
            f"unknown store embeddings {spec!r}; expected 'hashing', 'none' or 'openai:<model>'"
        )
    known = settings.store_embedding_dims or KNOWN_DIMS.get(model)
    if known is None:
        raise ValueError(f"set AGENT_SERVER_STORE_EMBEDDING_DIMS for the embeddings {model!r}")
    from langchain_openai import OpenAIEmbeddings

    options: dict[str, Any] = {}
    if settings.openai_api_key is not None:
        options["api_key"] = settings.openai_api_key
    if settings.openai_base_url is not None:
        options["base_url"] = settings.openai_base_url
    return OpenAIEmbeddings(model=model, **options), known


# -- memory --------------------------------------------------------------------------


class MemoryStore(InMemoryStore):
    """``InMemoryStore`` with item TTLs (LangGraph's has none): expiries kept beside the
    items, expired items dropped before every batch and by ``sweep_ttl()``."""

    supports_ttl = True

    def __init__(self, *, index: IndexConfig | None = None, ttl: TTLConfig | None = None):
        super().__init__(index=index)
        self.ttl_config = ttl
        # (namespace, key) -> (expires at, minutes)
        self.expiries: dict[tuple[tuple[str, ...], str], tuple[float, float]] = {}

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        self._expire(time.time())
        if any(isinstance(op, ListNamespacesOp) for op in ops):
            self._drop_empty()  # reads of absent items leave empty namespaces behind
        results = super().batch(ops)
        self._track(ops, results)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        self._expire(time.time())
        if any(isinstance(op, ListNamespacesOp) for op in ops):
            self._drop_empty()  # reads of absent items leave empty namespaces behind
        results = await super().abatch(ops)
        self._track(ops, results)
        return results

    def _track(self, ops: list[Op], results: list[Result]) -> None:
        now = time.time()
        for op, result in zip(ops, results, strict=True):
            if isinstance(op, PutOp):
                where = (op.namespace, op.key)
                if op.value is None or op.ttl is None:
                    self.expiries.pop(where, None)
                else:
                    self.expiries[where] = (now + op.ttl * 60, op.ttl)
            elif isinstance(op, GetOp) and op.refresh_ttl and isinstance(result, Item):
                self._refresh((result.namespace, result.key), now)
            elif isinstance(op, SearchOp) and op.refresh_ttl and isinstance(result, list):
                for item in result:
                    if isinstance(item, Item):
                        self._refresh((item.namespace, item.key), now)

    def _refresh(self, where: tuple[tuple[str, ...], str], now: float) -> None:
        if where in self.expiries:
            minutes = self.expiries[where][1]
            self.expiries[where] = (now + minutes * 60, minutes)

    def _expire(self, now: float) -> int:
        due = [where for where, (at, _) in self.expiries.items() if at <= now]
        if due:
            InMemoryStore.batch(self, [PutOp(ns, key, None) for ns, key in due])
            for where in due:
                del self.expiries[where]
            self._drop_empty()
        return len(due)

    def _drop_empty(self) -> None:
        """A namespace whose last item went is not listed any more (as in SQL stores)."""
        for namespace in [ns for ns, items in self._data.items() if not items]:
            del self._data[namespace]

    async def sweep_ttl(self) -> int:
        return self._expire(time.time())


# -- PostgreSQL ----------------------------------------------------------------------


class RetryingPostgresStore(AsyncPostgresStore):
    """LangGraph's PostgreSQL store with every batch under a ``StorageRetry`` (its
    statements are upserts, deletes and reads by key: safe to repeat)."""

    def __init__(
        self,
        pool: Any,
        retry: Any,
        *,
        index: Any = None,
        ttl: TTLConfig | None = None,
    ) -> None:
        super().__init__(pool, index=index, ttl=ttl)
        self.retry = retry

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        parent = super().abatch
        results: list[Result] = await self.retry(lambda: parent(ops))
        return results

    async def sweep_ttl(self) -> int:
        parent = super().sweep_ttl
        swept: int = await self.retry(parent)
        return swept


# -- semantic search without a vector extension ----------------------------------------


def _prefix(namespace: Sequence[str]) -> str:
    return ".".join(namespace)  # how LangGraph's SQL stores write a namespace


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms else 0.0


class RankedIndex:
    """Vectors in a table, ranked in Python (see the module docstring)."""

    def __init__(self, db: Database, embeddings: Embeddings, fields: list[str]) -> None:
        self.db = db
        self.embeddings = embeddings
        self.fields = fields
        blob = "BYTEA" if db.dialect == "postgres" else "BLOB"
        self.schema = (
            f"""CREATE TABLE IF NOT EXISTS agent_server_store_vectors (
            prefix TEXT NOT NULL, key TEXT NOT NULL, field TEXT NOT NULL,
            embedding {blob} NOT NULL, PRIMARY KEY (prefix, key, field))""",
        )

    async def setup(self) -> None:
        await self.db.setup(self.schema)

    async def update(self, puts: list[PutOp]) -> None:
        rows: list[tuple[str, str, str]] = []
        texts: list[str] = []
        for op in puts:
            prefix = _prefix(op.namespace)
            await self.db.run(
                "DELETE FROM agent_server_store_vectors WHERE prefix = ? AND key = ?",
                (prefix, op.key),
            )
            if op.value is None or op.index is False:
                continue
            paths = op.index if isinstance(op.index, list) else self.fields
            for path in paths:
                extracted = (
                    [_json_text(op.value)]
                    if path == "$"
                    else get_text_at_path(op.value, tokenize_path(path))
                )
                for i, text in enumerate(extracted):
                    rows.append((prefix, op.key, f"{path}.{i}"))
                    texts.append(text)
        if not texts:
            return
        vectors = await self.embeddings.aembed_documents(texts)
        for (prefix, key, field), vector in zip(rows, vectors, strict=True):
            await self.db.run(
                "INSERT INTO agent_server_store_vectors VALUES (?, ?, ?, ?) "
                "ON CONFLICT (prefix, key, field) DO UPDATE SET embedding = excluded.embedding",
                (prefix, key, field, array.array("f", vector).tobytes()),
            )

    async def rank(self, op: SearchOp, store: BaseStore) -> list[SearchItem]:
        candidates = (
            await store.abatch(
                [
                    SearchOp(
                        op.namespace_prefix,
                        op.filter,
                        RANK_CANDIDATES,
                        0,
                        None,
                        op.refresh_ttl,
                    )
                ]
            )
        )[0]
        assert isinstance(candidates, list)
        if not candidates:
            return []
        query = await self.embeddings.aembed_query(op.query or "")
        prefix = _prefix(op.namespace_prefix)
        sql = "SELECT prefix, key, embedding FROM agent_server_store_vectors"
        params: tuple[Any, ...] = ()
        if prefix:
            sql += " WHERE prefix = ? OR prefix LIKE ? ESCAPE '\\'"
            params = (prefix, _like(prefix) + ".%")
        best: dict[tuple[str, str], float] = {}
        for row_prefix, key, blob in await self.db.run(sql, params):
            vector = array.array("f")
            vector.frombytes(bytes(blob))
            score = _cosine(query, vector)
            where = (str(row_prefix), str(key))
            best[where] = max(score, best.get(where, -math.inf))
        scored = [
            SearchItem(
                item.namespace,
                item.key,
                item.value,
                item.created_at,
                item.updated_at,
                best.get((_prefix(item.namespace), item.key)),
            )
            for item in candidates
            if isinstance(item, Item)
        ]
        scored.sort(key=lambda i: (i.score is not None, i.score or 0.0), reverse=True)
        return scored[op.offset : op.offset + op.limit]

    async def prune(self) -> None:
        """Drop the vectors of items that are gone (expired and swept)."""
        await self.db.run(
            "DELETE FROM agent_server_store_vectors WHERE NOT EXISTS (SELECT 1 FROM store s "
            "WHERE s.prefix = agent_server_store_vectors.prefix "
            "AND s.key = agent_server_store_vectors.key)"
        )


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()


class RankedStore(AsyncBatchedBaseStore):
    """A LangGraph store without an index, with a :class:`RankedIndex` for searches
    that have a ``query``. Every other operation is the inner store's."""

    supports_ttl = True

    def __init__(self, inner: BaseStore, index: RankedIndex, ttl: TTLConfig | None) -> None:
        super().__init__()
        self.inner = inner
        self.index = index
        self.ttl_config = ttl

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        plain = [i for i, op in enumerate(ops) if not (isinstance(op, SearchOp) and op.query)]
        if plain:
            for i, result in zip(
                plain, await self.inner.abatch([ops[i] for i in plain]), strict=True
            ):
                results[i] = result
        puts = [op for op in ops if isinstance(op, PutOp)]
        if puts:
            await self.index.update(puts)
        for i, op in enumerate(ops):
            if isinstance(op, SearchOp) and op.query:
                results[i] = await self.index.rank(op, self.inner)
        return results

    async def sweep_ttl(self) -> int:
        swept: int = await self.inner.sweep_ttl()  # type: ignore[attr-defined]
        await self.index.prune()
        return swept


# -- opening -------------------------------------------------------------------------


async def open_store(settings: Settings, checkpointer: Any, stack: AsyncExitStack) -> BaseStore:
    """The store that goes with the saver (see the module docstring); ``stack`` closes it."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from agent_server.storage import RetryingPostgresSaver

    embedding = load_embeddings(settings)
    ttl: TTLConfig = {
        "default_ttl": settings.store_ttl_minutes,
        "refresh_on_read": settings.store_ttl_refresh_on_read,
        "omit_expired": True,
    }
    index: IndexConfig | None = None
    if embedding is not None:
        index = {"embed": embedding[0], "dims": embedding[1], "fields": settings.store_index_fields}
    if isinstance(checkpointer, RetryingPostgresSaver):
        store: BaseStore = await _postgres(checkpointer, index, ttl)
    elif isinstance(checkpointer, AsyncSqliteSaver):
        store = await _sqlite(settings, index, ttl, stack)
    else:
        store = MemoryStore(index=index, ttl=ttl)
        logger.debug("store: in memory%s", ", semantic search" if index else "")
    stack.push_async_callback(_stop_batching, store)
    return store


async def _stop_batching(store: BaseStore) -> None:
    """The batching stores' background task (``AsyncBatchedBaseStore``) ends with us."""
    for each in (store, getattr(store, "inner", None)):
        task = getattr(each, "_task", None)
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _postgres(saver: Any, index: IndexConfig | None, ttl: TTLConfig) -> BaseStore:
    import psycopg

    pool, retry = saver.conn, saver.retry
    plain = RetryingPostgresStore(pool, retry, ttl=ttl)
    if index is None:
        await setup_lock(pool, lambda _: plain.setup())
        logger.debug("store: PostgreSQL")
        return plain
    if await _has_pgvector(pool):
        native = RetryingPostgresStore(pool, retry, index=index, ttl=ttl)
        try:
            await setup_lock(pool, lambda connection: _setup_pgvector(native, connection))
        except psycopg.Error as exc:
            logger.warning("store: pgvector could not be set up (%s); ranking in Python", exc)
            await _stop_batching(native)
        else:
            await _stop_batching(plain)
            logger.debug("store: PostgreSQL, semantic search with pgvector")
            return native
    else:
        logger.debug("store: PostgreSQL has no pgvector; semantic search ranks in Python")
    ranked = RankedIndex(PostgresDatabase(pool, retry), index["embed"], index["fields"])  # type: ignore[arg-type]

    async def setup(_: Any) -> None:
        await plain.setup()
        await ranked.db.run(ranked.schema[0])

    await setup_lock(pool, setup)
    return RankedStore(plain, ranked, ttl)


async def _has_pgvector(pool: Any) -> bool:
    async with pool.connection() as connection:
        row = await (
            await connection.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') "
                "AS available"
            )
        ).fetchone()
    return bool(row["available"] if isinstance(row, dict) else row[0])


async def _setup_pgvector(store: AsyncPostgresStore, connection: Any) -> None:
    # LangGraph's first vector migration is a bare CREATE EXTENSION, which fails where
    # the extension exists already (another schema's store made it): count it as done.
    row = await (
        await connection.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') AS present"
        )
    ).fetchone()
    if row["present"] if isinstance(row, dict) else row[0]:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS vector_migrations (v INTEGER PRIMARY KEY)"
        )
        await connection.execute("INSERT INTO vector_migrations VALUES (0) ON CONFLICT DO NOTHING")
    await store.setup()


# -- SQLite --------------------------------------------------------------------------


async def _sqlite(
    settings: Settings, index: IndexConfig | None, ttl: TTLConfig, stack: AsyncExitStack
) -> BaseStore:
    import aiosqlite
    from langgraph.store.sqlite.aio import AsyncSqliteStore

    path = Path(settings.database_url.removeprefix("sqlite:///"))
    # A connection of its own: the store runs its own transactions, which must not
    # interleave with the saver's on one connection.
    conn = await stack.enter_async_context(
        aiosqlite.connect(str(path), isolation_level=None, timeout=30)
    )
    await conn.execute("PRAGMA journal_mode=WAL")
    native = index is not None and hasattr(sqlite3.Connection, "enable_load_extension")
    store = AsyncSqliteStore(conn, index=index if native else None, ttl=ttl)
    await store.setup()
    if index is None or native:
        logger.debug("store: SQLite%s", ", semantic search with sqlite-vec" if native else "")
        return store
    logger.info(
        "store: SQLite (this Python cannot load sqlite-vec); semantic search ranks in Python"
    )
    ranked = RankedIndex(SqliteDatabase(conn, store.lock), index["embed"], index["fields"])  # type: ignore[arg-type]
    await ranked.setup()
    return RankedStore(store, ranked, ttl)
