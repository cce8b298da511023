"""Data-parallel training of one trial across processes: TensorFlow's
MultiWorkerMirroredStrategy, whose cluster each process reads from TF_CONFIG.

Keras 3 under this strategy fails in `fit` with more than one worker: it reduces nested
batches and scalar losses with `Strategy.reduce(..., axis=0)`, which the collective strategy
refuses (tensorflow/tensorflow#72388; "Invalid reduction dimension 0 for input with 0
dimensions"). `multi_worker_strategy` returns the strategy with `reduce` applied per tensor
and without an axis on scalars: the same mean, and two workers then train exactly as one does
(`tests/test_data_parallel.py`).
"""
from __future__ import annotations

import json


def tf_config(addresses: list[str], index: int) -> str:
    """TF_CONFIG of worker `index` in a cluster of `addresses` ("host:port", rank order)."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def multi_worker_strategy():
    """MultiWorkerMirroredStrategy of the cluster in TF_CONFIG, usable by Keras 3's `fit`.
    Create it after the devices are configured and before any other TensorFlow op."""
    import tensorflow as tf

    class _KerasMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            parent = super()

            def one(v):
                rank = self.experimental_local_results(v)[0].shape.rank
                return parent.reduce(reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    return _KerasMultiWorker()
