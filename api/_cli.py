"""The ``ember`` command line."""

from __future__ import annotations

import click


@click.group(help="ember: a Ray-compatible runtime with durable lineage.")
@click.version_option(package_name="ember-runtime")
def main() -> None:
    pass


@main.command(help="Run a short workload on a fresh local cluster and report what it did.")
@click.option("--size-mb", default=400, show_default=True, help="Size of the large numpy object.")
def demo(size_mb: int) -> None:
    from ember._demo import run_demo

    raise SystemExit(run_demo(size_mb=size_mb, echo=click.echo))


if __name__ == "__main__":
    main()
