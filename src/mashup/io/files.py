"""Weight files and their bytes: which files a checkpoint dir holds, their stats, loading them, atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup.errors import CheckpointError

# torch is imported where tensors are made: the library's catalog imports this package, and listing the
# library reads its catalog only (torch takes about 2 s to import here; registering imports it for the NaN
# check)
if TYPE_CHECKING:
    import torch

WEIGHTS_ONLY_FAILED = "Weights only load failed"  # torch's UnpicklingError for a pickle that holds objects


def write_json(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, atomically (``write_text_atomic``): a summary written last marks its dir
    complete."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def local_absolute(path: str | None, *, must_exist: bool = True) -> str | None:
    """``path`` as an output records it: absolute (``~`` expanded) where it names a local file or dir, so that the
    record means the same from any working dir; else (nothing there and ``must_exist``, or None) as given."""
    if not path or must_exist and not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().absolute())


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` at ``path``, written to a temp sibling and renamed: a reader (or a kill) never meets half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def same_path(a: str, b: str) -> bool:
    """Whether two spellings name one file or dir, without reading it: equal strings, or local paths (spelled as
    paths, or existing here) that resolve alike."""
    if a == b:
        return True
    if any(s.startswith(("/", ".", "~")) or Path(s).expanduser().exists() for s in (a, b)):
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    return False


def drop_json_field(path: Path, field: str) -> None:
    """Remove ``field`` from the JSON object at ``path`` (written again atomically), where it is there."""
    data = json.loads(path.read_text())
    if data.pop(field, None) is not None:
        write_json(path, data)


def stat_files(paths: list[Path]) -> list[dict[str, Any]]:
    """Name, size, mtime, ctime and inode of each file: what tells, short of hashing, that a file changed.

    ctime cannot be set back by tools that restore an mtime (``touch -d``, ``cp -p``), and the inode
    changes when a file is replaced by another one.
    """
    stats = []
    for path in paths:
        st = path.stat()
        stats.append({"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                      "ino": st.st_ino})
    return stats


SAFETENSORS_INDEX = "model.safetensors.index.json"
# what transformers 5's from_pretrained looks for in a model dir, in its order (modeling_utils'
# _get_resolved_checkpoint_files): a config's transformers_weights first, then these; the pickles only where
# mashup loads with use_safetensors=None (--allow-pickle). No variant (model.fp16.safetensors): mashup passes none
SAFETENSORS_NAMES = ("model.safetensors", SAFETENSORS_INDEX)
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# a Trainer's arguments and (FSDP) optimizer and scheduler states: pickles beside its weights, not weights
NOT_WEIGHTS = frozenset({"training_args.bin", "optimizer.bin", "scheduler.bin"})
EXPLICIT_WEIGHTS = "transformers_weights"  # config.json's field naming the weights file (or index) to load


def weight_files(model_dir: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files of a model or adapter dir, all that identify it (hashed, stat-checked): safetensors, or
    pickles only when allowed. ``loaded_weight_files`` gives those transformers loads."""
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    if (model_dir / SAFETENSORS_INDEX).is_file():
        _index_shards(model_dir, model_dir / SAFETENSORS_INDEX)  # its shards are gone: the line naming them
    pickles = sorted(p for p in model_dir.glob("*.bin") if p.name not in NOT_WEIGHTS)
    if pickles and not allow_pickle:
        raise CheckpointError(
            "only pickle (.bin) weights found; refusing to unpickle",
            str(model_dir),
            "convert them to safetensors or pass --allow-pickle",
        )
    if pickles:
        return pickles
    raise CheckpointError("no weight files (*.safetensors)", str(model_dir), "point at a model or adapter dir")


def loaded_weight_files(model_dir: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files transformers loads from a model dir, as it picks them: the file (or index) its config's
    ``transformers_weights`` names, else ``model.safetensors``, else the shards its index names (with pickles
    allowed then ``pytorch_model.bin`` or its index's shards); a model dir holding weights transformers would not
    load (shards without their index, a variant such as ``model.fp16.safetensors``) is refused. A dir may hold
    another copy of the weights beside them (Mistral's Hub repos: consolidated.safetensors, for mistral-inference),
    which reading the model's tensors must leave out. An adapter dir (adapter_config.json, whether or not it ships
    its base's config.json, as many Hub adapters do) gives ``weight_files``, as ever."""
    if (model_dir / "adapter_config.json").is_file():  # as inspect_checkpoint tells an adapter from a model
        refuse_model_beside_adapter(model_dir)
        return weight_files(model_dir, allow_pickle=allow_pickle)
    entry = _explicit_weights(model_dir, allow_pickle)
    names = SAFETENSORS_NAMES + (PICKLE_NAMES if allow_pickle else ())
    entry = entry or next((model_dir / name for name in names if (model_dir / name).is_file()), None)
    if entry is None:
        found = weight_files(model_dir, allow_pickle=allow_pickle)  # no weights, or pickles not allowed: its line
        raise CheckpointError(f"transformers loads none of its weight files ({_some(found)}): it reads "
                              f"{' or '.join(names)}", str(model_dir),
                              "re-save the model with save_pretrained (or write the index of its shards, or rename "
                              "a single file model.safetensors)")
    return _index_shards(model_dir, entry) if entry.name.endswith(".index.json") else [entry]


def refuse_model_beside_adapter(model_dir: Path) -> None:
    """Refuse a dir holding a model's weights beside adapter_config.json (a merge_and_unload output saved into its
    adapter's dir): mashup reads a dir as one or the other, while transformers 5 loads it (with its config.json) as
    the model with the adapter applied again on top (``maybe_load_adapters``)."""
    if not (model_dir / "adapter_config.json").is_file():
        return
    explicit = explicit_weights_name(model_dir)
    names = (explicit,) if isinstance(explicit, str) else SAFETENSORS_NAMES + PICKLE_NAMES
    model = next((name for name in names if (model_dir / name).is_file()), None)
    if model is not None:
        raise CheckpointError(f"holds a model's weights ({model}) beside an adapter (adapter_config.json): a dir is "
                              "one or the other (transformers loads it as the model with the adapter applied on top)",
                              str(model_dir), "move the adapter's files (adapter_config.json, adapter_model.*) or the "
                              "model's to a dir of their own")


def _explicit_weights(model_dir: Path, allow_pickle: bool) -> Path | None:
    """The file config.json's ``transformers_weights`` names, which transformers loads before any other; None
    where it names none (an unreadable config.json is the load's to report)."""
    name, where = explicit_weights_name(model_dir), str(model_dir / "config.json")
    if name is None:
        return None
    if not isinstance(name, str) or not (name.endswith((".safetensors", ".safetensors.index.json"))
                                         or name == "adapter_model.bin"):  # transformers refuses any other
        raise CheckpointError(f"{EXPLICIT_WEIGHTS} {name!r} is not a safetensors file or index", where,
                              f"fix {EXPLICIT_WEIGHTS} or remove it (transformers then loads model.safetensors)")
    name = os.path.normpath(name)  # "./weights.safetensors" is the file beside config.json
    if Path(name).name != name:  # transformers takes a subfolder's file, which mashup neither hashes nor checks
        raise CheckpointError(f"{EXPLICIT_WEIGHTS} names {name}, not a file beside config.json", where,
                              f"move the file beside config.json and set {EXPLICIT_WEIGHTS} to its name")
    if not (model_dir / name).is_file():
        raise CheckpointError(f"{EXPLICIT_WEIGHTS} names {name}, which is missing", where,
                              f"copy the model's files again, or fix {EXPLICIT_WEIGHTS}")
    if name.endswith(".bin") and not allow_pickle:
        raise CheckpointError(f"{EXPLICIT_WEIGHTS} names pickle weights ({name}); refusing to unpickle", where,
                              "convert them to safetensors or pass --allow-pickle")
    return model_dir / name


def explicit_weights_name(model_dir: Path) -> object:
    """What config.json's ``transformers_weights`` holds (a file name, if valid), or None: absent, or no config
    that parses (the load's to report)."""
    try:
        return json.loads((model_dir / "config.json").read_text()).get(EXPLICIT_WEIGHTS)
    except (OSError, ValueError, AttributeError):
        return None


def _some(paths: list[Path]) -> str:
    """A few file names, for an error line."""
    return ", ".join(p.name for p in paths[:3]) + (f", ... ({len(paths)} files)" if len(paths) > 3 else "")


def _index_shards(model_dir: Path, index: Path) -> list[Path]:
    """The shards ``index`` names, each a file of ``model_dir``, at least one, all there."""
    try:
        names = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index.name} is not a weight index ({type(exc).__name__}: {exc})",
                              str(index), "re-save the model") from None
    shards = sorted(model_dir / name for name in names if isinstance(name, str))
    outside = next((name for name in sorted(map(str, names)) if Path(name).name != name), None)
    if outside is not None or not shards:
        raise CheckpointError(f"{index.name} names {'shard ' + outside if outside else 'no shards'}, not a "
                              "file of this dir", str(index), "re-save the model")
    missing = [shard for shard in shards if not shard.is_file()]
    if missing:
        raise CheckpointError(f"shard {missing[0].name} named by {index.name} is missing "
                              f"({len(missing)} missing)", str(model_dir), "copy the model's files again")
    return shards


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load one weight file; pickles only through ``torch.load(weights_only=True)``, and only tensors by name."""
    import torch
    from safetensors.torch import load_file

    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only met an object: torch's advice is to unpickle it anyway
        if WEIGHTS_ONLY_FAILED not in str(exc):
            raise unreadable_error(path, exc) from None
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise objects_error(path, found.group(1) if found else None) from None
    except Exception as exc:  # corrupt or truncated files raise library-specific errors
        raise unreadable_error(path, exc) from None
    if not isinstance(tensors, dict) or not all(isinstance(name, str) and isinstance(value, torch.Tensor)
                                                for name, value in tensors.items()):
        raise objects_error(path, None)
    return tensors


def objects_error(path: Path, found: str | None) -> CheckpointError:
    """The one error line for a pickle that holds more than a mapping of names to tensors."""
    what = f" ({found})" if found else ""
    return CheckpointError(f"the pickle holds objects beyond tensors{what}, and mashup loads only tensor-only "
                           "pickles", str(path),
                           "convert it to safetensors (a dict of its tensors, saved with safetensors.torch.save_file)")


def unreadable_error(path: Path, exc: Exception) -> CheckpointError:
    """The one error line for a weight file that cannot be read."""
    return CheckpointError(f"cannot read weights ({type(exc).__name__}: {exc})", str(path),
                           "the file is corrupt or truncated; re-save or re-download it")


def load_weight_dir(model_dir: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a model or adapter dir's weight files, as transformers loads them (``loaded_weight_files``:
    not another copy of them beside), in one dict."""
    tensors: dict[str, torch.Tensor] = {}
    for path in loaded_weight_files(model_dir, allow_pickle=allow_pickle):
        tensors.update(load_weights(path))
    return tensors


def readable_size(n: float) -> str:
    """A byte count as people read it: ``512 B``, ``3.9 KB``, ``1.2 GB`` (powers of 1024)."""
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
