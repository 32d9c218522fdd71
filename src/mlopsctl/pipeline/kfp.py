"""Compile the pipeline to Kubeflow Pipelines v2 (IR YAML) with the ``kfp`` SDK (the ``[kubeflow]`` extra).

One container component per step runs ``mlopsctl -C WORKDIR pipeline step NAME --fingerprint F`` in the
project's image, after the steps it depends on. KFP v2 caches a task on its component spec (image, command,
arguments) and inputs, not on the content of what it reads; the step's fingerprint in the arguments (its
definition, params, the content of its raw inputs and its upstream steps' fingerprints) makes KFP's cache
follow the content, and ``pipeline step`` refuses to run when the image's project no longer matches it.
Steps marked ``always`` (and commands without deps) have KFP's cache turned off.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlopsctl.common import atomic_path
from mlopsctl.errors import ConfigError
from mlopsctl.pipeline.graph import Pipeline


def component_name(step: str) -> str:
    """KFP's form of a name: lower case, runs of other characters as one '-'."""
    return re.sub(r"[^0-9a-z]+", "-", step.lower()).strip("-") or "step"


def pipeline_name(name: str) -> str:
    return component_name(name) or "pipeline"


def compile_pipeline(pipeline: Pipeline, fingerprints: dict[str, str], *, output: Path, image: str, workdir: str,
                     name: str) -> None:
    try:
        import yaml
        from kfp import compiler, components, dsl
    except ImportError:
        raise ConfigError("compiling for Kubeflow Pipelines needs the kfp SDK; install it with "
                          "pip install 'mlopsctl[kubeflow]'.") from None
    seen: dict[str, str] = {}
    for n in pipeline.order:
        c = component_name(n)
        if c in seen:
            raise ConfigError(f"pipeline steps {seen[c]!r} and {n!r} have the same Kubeflow name {c!r}; rename one.")
        seen[c] = n

    factories = {}
    for n in pipeline.order:
        spec = {"name": component_name(n),
                "description": f"mlopsctl pipeline step {n} ({pipeline.steps[n].kind})",
                "implementation": {"container": {
                    "image": image, "command": ["mlopsctl"],
                    "args": ["-C", workdir, "pipeline", "step", n, "--fingerprint", fingerprints[n]]}}}
        factories[n] = components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))

    @dsl.pipeline(name=pipeline_name(name), description=f"mlopsctl pipeline of {name}")
    def _pipeline():  # no annotations: kfp reads them as the pipeline's inputs and outputs
        tasks = {}
        for n in pipeline.order:
            step = pipeline.steps[n]
            task = factories[n]()
            task.set_display_name(n)
            task.set_caching_options(step.cacheable)
            for u in step.upstream:
                task.after(tasks[u])
            tasks[n] = task

    with atomic_path(Path(output)) as tmp:
        side = tmp.with_suffix(".yaml")  # the compiler picks its format by the file's suffix
        try:
            compiler.Compiler().compile(_pipeline, str(side))
            side.replace(tmp)
        finally:
            side.unlink(missing_ok=True)
