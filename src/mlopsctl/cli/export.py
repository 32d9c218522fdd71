"""``mlopsctl export``."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from mlopsctl.cli._console import JsonFlag, cli_path, print_json, settings_from
from mlopsctl.cli._errors import reports_errors

NEXT_STEPS = {
    "triton": "tritonserver --model-repository={out}",
    "kserve": "upload {out}/repository to the storage URI, then kubectl apply -f {out}/inferenceservice-triton.yaml "
              "(or build the docker export's image and apply {out}/mlopsctl-runtime.yaml)",
    "docker": "docker build -t IMAGE {out} && docker run -p 8080:8080 -e MLOPS_SERVE_TOKEN=... IMAGE",
}


def register(app: typer.Typer) -> None:
    @app.command()
    @reports_errors
    def export(
        ctx: typer.Context,
        model: Annotated[str, typer.Argument(help="MODEL, MODEL/VERSION or MODEL@ALIAS (the version it points at now).")],
        fmt: Annotated[str, typer.Option("--format", "-f", help="triton, kserve or docker.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write (must be empty or missing).")],
        force: Annotated[bool, typer.Option("--force", help="Replace the content of a non-empty --output folder.")] = False,
        max_batch_size: Annotated[Optional[int], typer.Option(
            help="triton/kserve: Triton's max_batch_size, the most rows per request and per merged batch "
                 "(default 1024).")] = None,
        wheel: Annotated[Optional[Path], typer.Option(
            help="docker: the mlopsctl wheel to install in the image (copied into wheels/).", dir_okay=False)] = None,
        storage_uri: Annotated[Optional[str], typer.Option(
            help="kserve: where repository/ will be uploaded (default: a ${STORAGE_URI} placeholder).")] = None,
        image: Annotated[Optional[str], typer.Option(
            help="kserve: the docker export's image for the mlopsctl runtime (default: an ${IMAGE} placeholder).")] = None,
        json_out: JsonFlag = False,
    ) -> None:
        """Export a registered version for Triton, KServe or a container; the model.onnx is the registered file.

        Examples:

          mlopsctl export churn@production --format triton -o triton-repo

          mlopsctl export churn/3 --format kserve -o k8s --storage-uri s3://models/churn

          mlopsctl export churn/3 --format docker -o image --wheel dist/mlopsctl-0.1.0-py3-none-any.whl
        """
        from mlopsctl.services.export import export_model

        out = cli_path(output)
        result = export_model(settings_from(ctx), model, fmt, out, force=force, max_batch_size=max_batch_size,
                              wheel=cli_path(wheel), storage_uri=storage_uri, image=image)
        if json_out:
            print_json(result)
            return
        print(f"Exported {result['ref']} (model.onnx sha256 {result['onnx_sha256'][:12]}) as {fmt} to {out}:")
        for f in result["files"]:
            print(f"  {f}")
        if fmt == "docker" and not result["wheel"]:
            print("wheels/ is empty: put the mlopsctl wheel there (or export again with --wheel) before docker build.")
        print("Next: " + NEXT_STEPS[fmt].format(out=out))
