import multiprocessing
import pickle

from relight_datasets.transforms.base import ThreadPool


def _square(x):
    return x * x


def _child(pool, queue):
    queue.put(pool.map(_square, [1, 2, 3]))


def test_results_keep_their_order_and_the_pool_pickles():
    pool = ThreadPool(3)
    assert pool.map(_square, list(range(20))) == [x * x for x in range(20)]
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.threads == 3 and clone.map(_square, [4]) == [16]


def test_a_forked_process_starts_its_own_threads_instead_of_hanging():
    pool = ThreadPool(2)
    assert pool.map(_square, [5]) == [25]  # threads started in the parent
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(pool, queue))
    child.start()
    child.join(timeout=60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked process hung on the parent's thread pool"
    assert queue.get(timeout=5) == [1, 4, 9]
