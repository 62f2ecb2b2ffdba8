"""Four processes writing one library at once: no row is lost, nobody fails."""

import multiprocessing

from mashup.library import Library
from mashup.library.score_cache import ScoreCache
from tests.library.helpers import many_adapters

PROCESSES = 4
ADAPTERS_EACH = 5
SCORES_EACH = 25


def _writer(lib_dir: str, adapter_dirs: list[str], worker: int, barrier) -> None:
    library, cache = Library(lib_dir), ScoreCache(lib_dir)
    barrier.wait()  # all imports done: the writes below overlap
    for i, path in enumerate(adapter_dirs):
        library.add([path], task=f"worker{worker}")
        for j in range(SCORES_EACH // ADAPTERS_EACH):
            cache.put(f"sample-{worker}", [(f"sha-{worker}-{i}-{j}", float(i), 0.5, 8, 0.01)], target=f"t{worker}")
        library.list()


def test_four_processes_add_checkpoints_and_scores_without_losing_a_row(tmp_path, tiny_loras):
    adapters = many_adapters(tiny_loras[0], tmp_path / "adapters", PROCESSES * ADAPTERS_EACH)
    # fork where there is one: the children start with everything imported (spawn re-imports torch in each);
    # they open their own SQLite connections, and the parent holds none at this point
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = context.Barrier(PROCESSES)
    lib = tmp_path / "lib"  # does not exist yet: creating the catalog races too
    chunks = [[str(p) for p in adapters[w * ADAPTERS_EACH:(w + 1) * ADAPTERS_EACH]] for w in range(PROCESSES)]
    processes = [context.Process(target=_writer, args=(str(lib), chunks[w], w, barrier)) for w in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    records = Library(lib).list()
    assert len(records) == PROCESSES * ADAPTERS_EACH
    assert sorted(r.path for r in records) == sorted(str(p.resolve()) for p in adapters)
    assert {r.task for r in records} == {f"worker{w}" for w in range(PROCESSES)}
    entries = ScoreCache(lib).entries()
    assert len(entries) == PROCESSES * SCORES_EACH
    assert len({(e.checkpoint_sha, e.fingerprint) for e in entries}) == PROCESSES * SCORES_EACH
