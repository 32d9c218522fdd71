"""Pipelines: steps declared in ``.mlops.toml`` as a DAG, their content-keyed cache keys, and their KFP form.

No database here (like :mod:`mlopsctl.training`): :mod:`.graph` builds and checks the DAG, :mod:`.hashing`
hashes files and folders (skipping unchanged ones by size, mtime and inode), :mod:`.keys` turns a step's
inputs into its cache key and explains what changed, :mod:`.kfp` compiles the DAG to Kubeflow Pipelines.
The use case that runs steps and records them is :mod:`mlopsctl.services.pipeline`.
"""
