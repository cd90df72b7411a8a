"""Devices: the 1-D ``data`` mesh, shardings, and global batches.

Every program of frcnn-jax runs on one mesh over all devices (of all
processes): batches are sharded on ``data``, parameters and detections are
replicated. One GPU is a mesh of one.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def create_mesh(num_devices: int = -1) -> jax.sharding.Mesh:
  """A 1-D ``data`` mesh over all (or the first ``num_devices``) devices.

  Axis type Auto: the step is written for a single device and XLA's SPMD
  partitioner splits it along the batch.
  """
  devices = jax.devices()
  if num_devices > 0:
    devices = devices[:num_devices]
  return jax.make_mesh((len(devices),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh) -> dict:
  """This process's part of a batch -> a global array sharded on ``data``."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      local_batch)
