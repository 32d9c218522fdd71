"""The formats a registered version is exported in to the engines a team moves to: a Triton model repository, KServe manifests,
or a container build context that runs ``mlopsctl serve``.

Every format starts from the version's registered ``model.onnx`` (its bytes, verified against the registry's
sha256, are written unchanged) and its contract. Tensor names, dtypes and shapes come from the ONNX graph
itself and are checked against the contract, so what Triton is told is what ONNX Runtime will see.

- ``triton``: ``<name>/config.pbtxt`` + ``<name>/<version>/model.onnx``. One ``[N, 1]`` input per column
  (``TYPE_FP32`` numeric, ``TYPE_STRING`` categorical), the batch dimension implicit (``max_batch_size > 0``);
  a rank-1 output such as a classifier's ``label`` is ``dims: [1]`` + ``reshape: { shape: [] }``, since Triton
  allows no empty ``dims``. Dynamic batching on, with no queue delay: requests that are already waiting are
  merged, none is held back to wait for others.
- ``kserve``: that repository under ``repository/``, an ``InferenceService`` on KServe's Triton runtime, and a
  ``ServingRuntime`` + ``InferenceService`` pair running ``mlopsctl serve`` from the ``docker`` export's image
  (contract checks, ``/predict``, the prediction log and ``/metrics`` come along).
- ``docker``: a ``Dockerfile`` + ``.dockerignore``, and ``project/``: a self-contained mlopsctl project (a
  ``.mlops.toml``, a SQLite store holding only this version, its two artifacts) baked into the image, which
  runs ``mlopsctl serve NAME/VERSION`` on 0.0.0.0:8080 with the token from ``MLOPS_SERVE_TOKEN``.

The output folder is written in a temporary sibling and renamed into place, so it is never half-written;
each export is recorded as an ``exported`` event.
"""
