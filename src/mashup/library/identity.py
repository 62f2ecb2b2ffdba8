"""Base models identified by content, so that an alias (``smollm2-135m``), its resolved cache dir, a Hub id
and any spelling of the same path are one base.

The identity is a digest of the model's config (canonical JSON, without name/path/version fields) and of
the weight files transformers loads (``loaded_weight_files``: not another copy beside them, such as Mistral's
consolidated.safetensors). Before, every weight file was hashed; for a dir holding only the loaded files (nearly
every model) that is the same digest, and for one holding more, records made then hold ``legacy_base_identity``,
which ``BaseMatcher`` accepts while the dir the record names, or the base's, still holds that copy (without it
the old digest cannot be computed: such a record reads as of other content, to register again). Hashing a base's
weights costs seconds once; the result is cached (in ``$MASHUP_CACHE/identities.sqlite``) under the dir's path and
its files' sizes and mtimes, so later calls cost a few ``stat`` calls. Resolution never touches the network: a
named model counts only once converted, a Hub id only when already in the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from mashup.config import NAMED_BASES
from mashup.errors import CheckpointError, MashupError
from mashup.hub import is_hub_id
from mashup.io import loaded_weight_files, sha256_files, stat_files
from mashup.io.files import local_absolute, same_path
from mashup.library.db import ensure_table, read_connection, select_rows, write_transaction
from mashup.library.records import CheckpointRecord, read_json_object

logger = logging.getLogger(__name__)

CACHE_NAME = "identities.sqlite"
_CACHE_COLUMNS = {"key": "TEXT", "identity": "TEXT", "path": "TEXT"}
# fields that name or date a model rather than define it
_NAME_FIELDS = frozenset({"_name_or_path", "name_or_path", "transformers_version", "_commit_hash"})


def _cache_path() -> Path:
    from mashup.named_models import cache_root

    return cache_root() / CACHE_NAME


def _canonical_config(config_path: Path) -> bytes:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise MashupError(f"cannot read the base's config ({exc})", str(config_path), "fix the model dir") from None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k not in _NAME_FIELDS}
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def base_identity(model_dir: str | Path) -> str:
    """Content digest of a local HF model dir: canonical config plus the weight files transformers loads; cached by
    path, size and mtime."""
    model_dir = Path(model_dir).expanduser().resolve()
    return _identity(model_dir, loaded_weight_files(model_dir, allow_pickle=True))


def legacy_base_identity(model_dir: str | Path) -> str | None:
    """The digest mashup gave ``model_dir`` before it hashed only the loaded files (every weight file: Mistral's
    consolidated.safetensors too), as records registered then hold; None where it is ``base_identity``'s (the dir
    holds no other weight file), without hashing anything."""
    model_dir = Path(model_dir).expanduser().resolve()
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))  # what was hashed then
    if set(files) == set(loaded_weight_files(model_dir, allow_pickle=True)):
        return None
    return _identity(model_dir, files)


def _identity(model_dir: Path, files: list[Path]) -> str:
    """The digest of ``model_dir``'s config and ``files``, through the cache: keyed by the dir and the files' stats,
    so the legacy digest of a dir with other files has its own key (the one it was cached under before)."""
    stats = stat_files([model_dir / "config.json", *files])  # stat before hashing, as the catalog does
    key = hashlib.sha256(json.dumps([str(model_dir), [(s["name"], s["size"], s["mtime_ns"]) for s in stats]])
                         .encode()).hexdigest()
    cached = _cache_get(key)
    if cached:
        return cached
    digest = hashlib.sha256(b"config:" + _canonical_config(model_dir / "config.json"))
    digest.update(b"weights:" + sha256_files(files).encode())
    identity = digest.hexdigest()
    _cache_put(key, identity, model_dir)
    return identity


def _cache_get(key: str) -> str | None:
    try:
        with read_connection(_cache_path(), "identity cache") as conn:
            rows = select_rows(conn, "identities", ["identity"], "WHERE key = ?", (key,))
    except MashupError as exc:
        logger.warning("not using the base identity cache: %s", exc.line())
        return None
    return rows[0]["identity"] if rows else None


def _cache_put(key: str, identity: str, model_dir: Path) -> None:
    try:
        with write_transaction(_cache_path(), "identity cache",
                               lambda conn: ensure_table(conn, "identities", _CACHE_COLUMNS, "key")) as conn:
            conn.execute("INSERT OR REPLACE INTO identities (key, identity, path) VALUES (?, ?, ?)",
                         (key, identity, str(model_dir)))
    except MashupError as exc:  # a cache: the identity is still right, only the next call is slower
        logger.warning("cannot cache the base identity: %s", exc.line())


def local_base_dir(base: str) -> Path | None:
    """The local model dir ``base`` names, found without any network access; None if there is none yet."""
    from mashup.named_models import NAMED_MODELS, default_cache_dir, is_converted

    if base in NAMED_MODELS:
        converted = default_cache_dir() / base
        return converted if is_converted(converted) else None
    path = Path(base).expanduser()
    if path.is_dir():
        return path if (path / "config.json").is_file() else None
    if not is_hub_id(base):
        return None
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(base, local_files_only=True))
    except Exception:  # not in the local HF cache (or no hub library): unresolvable offline, by design
        return None
    return snapshot if (snapshot / "config.json").is_file() else None


_BASE_FIX = "pass --base the model dir it was fine-tuned from (or a named model, or a Hub id)"


def check_base_dir(base: str) -> None:
    """Refuse a base that is neither a named model, a Hub id nor a local model dir (config.json, a JSON object,
    beside weight files), as ``models.check_base_available`` reads a name: a named model or a Hub id passes whether
    or not it is at hand (nothing is downloaded); any other name is a path, which must be such a dir."""
    from mashup.named_models import NAMED_MODELS

    path = Path(base).expanduser()
    if base in NAMED_MODELS or (not path.exists() and is_hub_id(base)):
        return
    if not path.exists() and not base.startswith((".", "~")) and "/" not in base:  # a name more than a path
        raise CheckpointError(f"unknown base model '{base}': not a named model, a local model dir or a Hub id", None,
                              f"use a named model ({', '.join(sorted(NAMED_MODELS))}), a model dir or a Hub id")
    if not path.exists():
        raise CheckpointError("base model not found", str(path.absolute()), _BASE_FIX)
    if not path.is_dir():
        raise CheckpointError("base model is a file, not a model dir", str(path.absolute()), _BASE_FIX)
    if not (path / "config.json").is_file():
        raise CheckpointError("no config.json in the base model dir", str(path.absolute()), _BASE_FIX)
    try:
        read_json_object(path / "config.json")
        loaded_weight_files(path, allow_pickle=True)  # what the load reads: shards without an index are no base
    except CheckpointError as exc:
        raise CheckpointError(f"not a base model dir: {exc.what}", str(path.absolute()), _BASE_FIX) from None


def stored_base(base: str) -> str:
    """How the catalog records ``base``: an existing local path absolute (symlinks kept), so that the record means
    the same from any working dir; a named model (``smollm2-135m``, which ``local_base_dir`` ranks before a dir of
    that name) or a Hub id as given."""
    from mashup.named_models import NAMED_MODELS

    return base if base in NAMED_MODELS else local_absolute(base) or base


def resolve_identity(base: str) -> str | None:
    """``base_identity`` of what ``base`` names locally, or None when it cannot be resolved offline."""
    model_dir = local_base_dir(base)
    if model_dir is None:
        return None
    try:
        return base_identity(model_dir)
    except (MashupError, OSError) as exc:  # e.g. a dir without weight files: fall back to comparing names
        logger.debug("no identity for base %s: %s", base, exc)
        return None


def same_base(a: str, b: str) -> bool:
    """Whether two spellings name one base: by content identity where both resolve locally, else by spelling
    (``BaseMatcher``'s rule, for two names rather than a record)."""
    identities = resolve_identity(a), resolve_identity(b)
    return identities[0] == identities[1] if all(identities) else same_spelling(a, b)


def same_spelling(a: str, b: str) -> bool:
    """Whether two spellings name one base or dir without reading it: equal strings, or local paths resolving alike.
    A named model and a dir of its name differ (a name is read as the named model, whatever is in the cwd)."""
    if a == b:
        return True
    if (a in NAMED_BASES) != (b in NAMED_BASES):
        return False
    return same_path(a, b)


class BaseMatcher:
    """Whether records were made on a given base: by content identity where both sides resolve locally,
    else by spelling (equal strings or the same resolved path). Identities are resolved once per spelling.
    A record's stored identity may be a ``legacy_base_identity`` (registered before the identity left out files
    transformers does not load): of a dir of this base, that is the same base too."""

    def __init__(self, base: str, identity: str | None = None) -> None:
        self.base = base
        self.identity = identity if identity is not None else resolve_identity(base)
        self._resolved: dict[str, str | None] = {}
        self._legacy_digests: dict[str, str | None] = {}

    def record_identity(self, record: CheckpointRecord) -> str | None:
        return self._stored_or_resolved(record.base_model, record.base_identity)

    def _stored_or_resolved(self, base_model: str, stored: str | None) -> str | None:
        return stored if stored else self._identity_of(base_model)

    def mismatch(self, record: CheckpointRecord) -> str | None:
        """Why ``record`` is not on this base, or None if it is."""
        return self.stored_mismatch(record.base_model, record.base_identity)

    def stored_mismatch(self, base_model: str, stored: str | None) -> str | None:
        """Why a base as a record stores it (its spelling ``base_model`` and ``stored`` identity, if any) is not this
        base, or None if it is."""
        other = self._stored_or_resolved(base_model, stored)
        if self.identity and other:
            if other == self.identity or self._on_legacy_digest(base_model, stored):
                return None
            if same_spelling(base_model, self.base):  # one dir, whose weights changed after registration
                return f"base model '{self.base}' holds other weights than when this checkpoint was registered"
            return f"base model '{base_model}' has other content than '{self.base}'"
        return None if same_spelling(base_model, self.base) else f"base model is '{base_model}', not '{self.base}'"

    def _on_legacy_digest(self, base_model: str, stored: str | None) -> bool:
        """Whether the ``stored`` identity is the ``legacy_base_identity`` of a dir of this base: the one
        ``base_model`` names, or this matcher's where it spells the base alike. Only a dir holding weight files
        transformers does not load is hashed (once; the digest was cached under the same key when it was the
        identity), and a dir's identity is resolved only when that digest is the stored one."""
        if not stored:
            return False
        names = {base_model} | ({self.base} if same_spelling(base_model, self.base) else set())
        return any(self._legacy(name) == stored and self._identity_of(name) == self.identity for name in sorted(names))

    def _legacy(self, name: str) -> str | None:
        if name not in self._legacy_digests:
            model_dir = local_base_dir(name)
            try:
                self._legacy_digests[name] = legacy_base_identity(model_dir) if model_dir is not None else None
            except (MashupError, OSError) as exc:  # e.g. the other copy deleted from the HF cache, its link left
                logger.debug("no legacy identity for base %s: %s", name, exc)
                self._legacy_digests[name] = None
        return self._legacy_digests[name]

    def _identity_of(self, name: str) -> str | None:
        if name not in self._resolved:
            self._resolved[name] = resolve_identity(name)
        return self._resolved[name]


RecordBase = tuple[str, str | None]  # a base as a record stores it: (base_model, base_identity)
BaseMemo = dict[tuple[RecordBase, RecordBase], bool]  # same_record_base's answers, for one pass over records


def record_base(record: CheckpointRecord) -> RecordBase:
    return record.base_model, record.base_identity


def same_record_base(a: RecordBase, b: RecordBase, memo: BaseMemo | None = None) -> bool:
    """Whether two bases as records store them are one, by ``BaseMatcher``'s rule (content identity where known,
    else spelling), tried from both sides: a legacy identity matches a newer one of the same base dir either way
    round. ``memo`` keeps the answers for a caller comparing many records over the same few bases (a selection's
    1,000 candidates): it resolves identities from disk, so it is kept no longer than one pass."""
    if a[1] and a[1] == b[1]:
        return True
    if a[0] == b[0] and not (a[1] and b[1]):
        return True  # one spelling, at most one stored identity: nothing tells them apart
    if memo is not None and (a, b) in memo:
        return memo[(a, b)]
    same = any(BaseMatcher(x[0], x[1]).stored_mismatch(*y) is None for x, y in ((a, b), (b, a)))
    if memo is not None:
        memo[(a, b)] = same
    return same
